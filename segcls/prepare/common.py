"""What the challenge importers share: finding folders in a raw download, reading and resizing images,
and writing the dataset folder (docs/ARCHITECTURE.md) so that it appears whole or not at all.

Splits are written with `segcls.data.folder.default_split` (the 50/25/25 by image that `open_dataset`
would draw), so an explicit split.json and a missing one agree.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from segcls.core.atomic import atomic_folder
from segcls.core.constants import IMAGE_SUFFIXES
from segcls.core.description import default_colors
from segcls.core.errors import DatasetError


def norm(name: str) -> str:
    """Compare folder and class names loosely: case, spaces, '_' and '-' do not matter."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def find_child(folder: Path, name: str) -> Path:
    """Sub-folder `name` of `folder`, matched with `norm` (mirrors of the downloads differ in case and
    separators: "Train Imgs" / "Train_imgs", "InSitu" / "In Situ")."""
    want = norm(name)
    for child in sorted(folder.iterdir()):
        if child.is_dir() and norm(child.name) == want:
            return child
    raise DatasetError(f"missing folder '{name}' in {folder}")


def locate_root(raw: str | Path, required: Sequence[str], challenge: str) -> Path:
    """The folder that holds `required` sub-folders: `raw` itself or its only sub-folder that does
    (the archives unpack into one top folder, e.g. ICIAR2018_BACH_Challenge/)."""
    raw = Path(raw)
    if not raw.is_dir():
        raise DatasetError(f"raw {challenge} folder not found: {raw}")

    def has_all(folder: Path) -> bool:
        names = {norm(c.name) for c in folder.iterdir() if c.is_dir()}
        return all(norm(r) in names for r in required)

    if has_all(raw):
        return raw
    candidates = [c for c in sorted(raw.iterdir()) if c.is_dir() and has_all(c)]
    if len(candidates) == 1:
        return candidates[0]
    missing = next(r for r in required if not any(norm(c.name) == norm(r) for c in raw.iterdir()))
    raise DatasetError(
        f"{raw} is not a raw {challenge} download: missing folder '{missing}' (expected {', '.join(required)})"
    )


def list_images(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


@contextlib.contextmanager
def open_image(path: Path) -> Iterator[Image.Image]:
    """Open `path` (pixels decoded on use); a file PIL cannot read or decode is a DatasetError."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, SyntaxError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


def load_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode `path` as RGB uint8, resized to `size` (w, h) with antialiasing when given.

    JPEGs are decoded at the smallest DCT scale that is still >= `size` (`Image.draft`), which makes a
    5000 px core a quarter of the work to shrink to 1024 px."""
    with open_image(path) as image:
        if size is not None and image.format == "JPEG":
            image.draft("RGB", size)
        rgb = image.convert("RGB")
        if size is not None and rgb.size != tuple(size):
            rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        return np.asarray(rgb)


def load_labels(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a label map (one value per pixel) without changing its values; nearest resizing."""
    with open_image(path) as image:
        labels = image if image.mode in ("L", "P", "I", "I;16") else image.convert("L")
        if size is not None and labels.size != tuple(size):
            labels = labels.resize(size, Image.Resampling.NEAREST)
        return np.asarray(labels)


def scaled_size(size: tuple[int, int], factor: float) -> tuple[int, int]:
    """(w, h) divided by `factor`, at least 1 px."""
    return max(1, round(size[0] / factor)), max(1, round(size[1] / factor))


def fit_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(w, h) scaled so that the longest side is `longest` (0 keeps the size)."""
    if longest <= 0:
        return size
    return scaled_size(size, max(size) / longest)


@dataclass
class Summary:
    """What an import wrote; `str()` is the one-line summary the CLI prints."""

    challenge: str
    out: Path
    classes: list[str]
    split: dict[str, list[str]]
    labeled: dict[str, int] = field(default_factory=dict)
    mpp: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(len(v) for v in self.split.values())

    def __str__(self) -> str:
        parts = [
            f"{self.challenge}: {self.images} images with masks "
            f"(train {len(self.split['train'])} / val {len(self.split['val'])} / test {len(self.split['test'])})"
        ]
        if self.labeled:
            parts.append(f"{sum(self.labeled.values())} labeled images")
        parts.append(f"{len(self.classes)} classes")
        if self.mpp:
            parts.append(f"{self.mpp:.3g} um/px")
        parts += self.notes
        return ", ".join(parts) + f" -> {self.out}"


class DatasetWriter:
    """Writes images/, masks/, labeled/ and the JSON files into a hidden folder beside the output."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "images").mkdir()
        (root / "masks").mkdir()
        self.names: set[str] = set()

    def add(self, name: str, image: np.ndarray, mask: np.ndarray, source: Path) -> None:
        if name in self.names:
            raise DatasetError(f"two raw images give the output name '{name}' (second: {source})")
        if image.shape[:2] != mask.shape:
            raise ValueError(f"{name}: image {image.shape[:2]} and mask {mask.shape} differ")
        self.names.add(name)
        Image.fromarray(image).save(self.root / "images" / f"{name}.png", compress_level=1)
        Image.fromarray(mask.astype(np.uint8), mode="L").save(self.root / "masks" / f"{name}.png")

    def add_labeled(self, cls: str, name: str, image: np.ndarray) -> None:
        folder = self.root / "labeled" / cls
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{name}.png", compress_level=1)

    def finish(
        self,
        classes: Sequence[str],
        split: dict[str, list[str]],
        mpp: float | None,
        colors: Sequence[Sequence[int]] | None = None,
    ) -> None:
        colors = colors or default_colors(len(classes))
        meta: dict = {"classes": list(classes), "colors": [[int(v) for v in c] for c in colors]}
        if mpp:
            meta["mpp"] = float(mpp)
        (self.root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        (self.root / "split.json").write_text(json.dumps(split, indent=2) + "\n")


@contextlib.contextmanager
def dataset_writer(out: str | Path, overwrite: bool = False) -> Iterator[DatasetWriter]:
    """Yield a writer on a temporary folder beside `out`; it takes the place of `out` only if the block
    succeeds, so a crash or Ctrl-C never leaves a half-written dataset at `out` (segcls.core.atomic)."""
    with atomic_folder(out, overwrite) as tmp:
        yield DatasetWriter(tmp)
