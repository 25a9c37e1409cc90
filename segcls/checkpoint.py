"""Training checkpoints: weights + the model's description + what is needed to resume exactly.

Saved atomically; loaded with `weights_only=True` (no pickled code runs on load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segcls.core.atomic import atomic_path
from segcls.core.description import ModelDescription
from segcls.core.errors import CheckpointError
from segcls.core.hashing import file_sha256  # noqa: F401 - re-exported: callers import it from here
from segcls.model import SegClsNet, build_model

FORMAT = "segcls-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model: SegClsNet, description: ModelDescription, **state: Any) -> None:
    """`state` holds resumable extras (optimizer, epoch, rng, config); values must be weights_only-safe."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "description": description.to_dict(),
        **state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip errors, unpickling errors, EOF...
        raise CheckpointError(f"{path} is not a readable segcls checkpoint ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a segcls checkpoint (no '{FORMAT}' format marker)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format_version']}; this segcls reads <= {FORMAT_VERSION}"
        )
    return payload


def load_model(path: str | Path) -> tuple[SegClsNet, ModelDescription, dict[str, Any]]:
    """Rebuild the network from a checkpoint, in eval mode on the CPU."""
    payload = load_checkpoint(path)
    description = ModelDescription.from_dict(payload["description"])
    model = build_model(description.num_classes)
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the segcls network: {first}") from None
    return model.eval(), description, payload
