"""Tiny dataset folders written to tmp_path for the segcls.data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_dataset(
    root: Path,
    pairs: dict[str, tuple[np.ndarray, np.ndarray]],
    classes: tuple[str, ...] = ("a", "b", "c"),
    labeled: dict[str, list[np.ndarray]] | None = None,
    split: dict[str, list[str]] | None = None,
    **description,
) -> Path:
    """A dataset folder: `pairs` maps name -> (RGB image, mask), `labeled` class -> RGB images."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "dataset.json").write_text(json.dumps({"classes": list(classes), **description}))
    for name, (image, mask) in pairs.items():
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    for cls, images in (labeled or {}).items():
        (root / "labeled" / cls).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image).save(root / "labeled" / cls / f"{cls}{i}.png")
    if split is not None:
        (root / "split.json").write_text(json.dumps(split))
    return root


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def block_mask(height: int, width: int, tile: int, labels: list[list[int]]) -> np.ndarray:
    """A mask whose grid tile (r, c) is filled with labels[r][c]; two-class tiles written as -2 (left half
    class 0, right half class 1)."""
    mask = np.full((height, width), 255, np.uint8)
    for r, row in enumerate(labels):
        for c, value in enumerate(row):
            block = mask[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
            if value == -2:
                block[:, : tile // 2], block[:, tile // 2 :] = 0, 1
            else:
                block[:] = value
    return mask
