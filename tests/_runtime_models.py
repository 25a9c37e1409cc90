"""Tiny random models and tissue-like images for the runtime tests (torch is used here, not by the runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segcls.core.description import ModelDescription

CLASSES = ("background", "benign", "tumour")


def deployed(seed: int = 0, mpp: float | None = 2.0, classes=CLASSES):
    """A DeployedModel with seeded random weights (and random BatchNorm statistics, so the labels vary)."""
    import torch

    from segcls.deployed import DeployedModel
    from segcls.model import build_model

    torch.manual_seed(seed)
    model = build_model(len(classes))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    description = ModelDescription(classes=classes, mpp=mpp, tile_size=128)
    return DeployedModel(model.eval(), description).eval(), description


_EXPORTED: dict = {}


def exported_onnx(tmp_path_factory, seed: int = 0, mpp: float | None = 2.0) -> Path:
    """An ONNX model exported by segcls.export from a random checkpoint, once per test session."""
    from segcls.export.onnx_export import export_onnx

    key = (seed, mpp)
    if key not in _EXPORTED:
        folder = tmp_path_factory.mktemp("model")
        checkpoint = save_checkpoint(folder / "model.pt", seed, mpp)
        _EXPORTED[key] = export_onnx(checkpoint, folder / "model.onnx", verify=False).path
    return _EXPORTED[key]


def without_metadata(model: Path, out: Path) -> Path:
    """A copy of an ONNX model with its segcls metadata removed."""
    import onnx

    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.save(proto, str(out))
    return out


def save_checkpoint(path: Path, seed: int = 0, mpp: float | None = 2.0) -> Path:
    from segcls.checkpoint import save_checkpoint as save

    module, desc = deployed(seed, mpp)
    save(path, module.model, desc)
    return path


def tissue_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """White glass with a few textured pink/purple blobs: what a tissue detector and a network expect."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.full((height, width, 3), 245, dtype=np.float32)
    for _ in range(6):
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        ry, rx = rng.uniform(0.08, 0.25) * height, rng.uniform(0.08, 0.25) * width
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        colour = np.array([rng.uniform(120, 220), rng.uniform(40, 120), rng.uniform(120, 200)])
        image[inside] = colour
    noise = rng.normal(0, 25, (height // 4 + 1, width // 4 + 1, 3))
    noise = np.repeat(np.repeat(noise, 4, 0), 4, 1)[:height, :width]
    tissue = image.min(axis=2) < 240
    image[tissue] += noise[tissue]
    return np.clip(image, 0, 255).astype(np.uint8)
