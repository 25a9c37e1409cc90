"""What a trained model is, in plain data: carried by checkpoints, ONNX metadata and engine sidecars.

Pure Python (no torch, no numpy) so that the runtime can read it on a deployment box.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from segcls.core.constants import NETWORK_STRIDE
from segcls.core.errors import ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def default_colors(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct display colours (tab10, then cycled) for classes without colours of their own."""
    return tuple(_PALETTE[i % len(_PALETTE)] for i in range(num_classes))


@dataclass(frozen=True)
class ModelDescription:
    """Everything export and the runtime need to use a model, and nothing about how it was trained."""

    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...] = ()
    mpp: float | None = None  # microns per pixel of the training tiles; None = unknown
    tile_size: int = 128  # training tile size
    stride: int = NETWORK_STRIDE
    mean: tuple[float, float, float] = IMAGENET_MEAN  # on RGB scaled to [0, 1]
    std: tuple[float, float, float] = IMAGENET_STD
    setting: str = ""  # S, S+C or S+C* (informational)
    seg_fraction: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.classes:
            raise ModelError("model description has no classes")
        colors = self.colors or default_colors(len(self.classes))
        if len(colors) != len(self.classes):
            raise ModelError(f"model description has {len(self.classes)} classes but {len(colors)} colours")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "colors", tuple(tuple(int(v) for v in c) for c in colors))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["colors"] = [list(c) for c in self.colors]
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelDescription:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "classes" not in known:
            raise ModelError("model description has no 'classes' entry")
        try:
            return cls(**known)
        except TypeError as e:
            raise ModelError(f"model description is malformed: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelDescription:
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, AttributeError) as e:
            raise ModelError(f"model description is not valid JSON: {e}") from None
