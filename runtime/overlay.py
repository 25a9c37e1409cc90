"""A quick look at a result: the slide's thumbnail with the class map blended in, and a legend.

The legend sits in a panel to the right of the thumbnail, so the thumbnail's pixels stay where they
are (pixel (x, y) of the overlay is pixel (x, y) of the thumbnail) and nothing of the slide is hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segcls.core.atomic import atomic_path


def blend(
    thumbnail: np.ndarray, labels: np.ndarray, colors: Sequence[Sequence[int]], alpha: float = 0.45
) -> np.ndarray:
    """`thumbnail` (h, w, 3) with class colours blended where the (nearest-resized) labels are a class."""
    h, w = thumbnail.shape[:2]
    rows = (np.arange(h) * labels.shape[0]) // h
    cols = (np.arange(w) * labels.shape[1]) // w
    resized = labels[rows][:, cols]
    palette = np.zeros((256, 3), dtype=np.float32)
    palette[: len(colors)] = np.asarray(colors, dtype=np.float32).reshape(-1, 3)
    out = thumbnail[..., :3].astype(np.float32)
    painted = resized < len(colors)
    out[painted] = (1 - alpha) * out[painted] + alpha * palette[resized[painted]]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def write_overlay(
    path: str | Path,
    thumbnail: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    colors: Sequence[Sequence[int]],
    alpha: float = 0.45,
) -> tuple[int, int]:
    """Write a PNG: `thumbnail` (RGB uint8) blended with `labels` (any size covering the same area;
    255 = not blended) plus a legend of class names, colours and their share of labelled pixels.
    Returns the PNG's (width, height)."""
    from PIL import Image, ImageDraw

    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if len(classes) != len(colors):
        raise ValueError(f"{len(classes)} classes but {len(colors)} colours")
    thumbnail = np.asarray(thumbnail)
    labels = np.asarray(labels)
    if thumbnail.ndim != 3 or thumbnail.shape[2] < 3 or labels.ndim != 2:
        raise ValueError(f"expected an (h, w, 3) thumbnail and (h, w) labels, got {thumbnail.shape}, {labels.shape}")
    image = Image.fromarray(blend(thumbnail, labels, colors, alpha))

    counts = np.bincount(labels.ravel(), minlength=256)[: len(classes)]
    total = max(int(counts.sum()), 1)
    size = max(12, min(32, image.height // 40))
    font = _font(size)
    line, pad, swatch = round(size * 1.5), size, size
    entries = [f"{name}  {100 * n / total:.1f}%" for name, n in zip(classes, counts, strict=True)]
    probe = ImageDraw.Draw(image)
    text_w = max((probe.textlength(e, font=font) for e in entries), default=0)
    panel_w = int(pad * 3 + swatch + text_w)
    canvas = Image.new("RGB", (image.width + panel_w, max(image.height, pad * 2 + line * len(entries))), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.width + pad
    for i, (entry, rgb) in enumerate(zip(entries, colors, strict=True)):
        y = pad + i * line
        draw.rectangle([x0, y, x0 + swatch, y + swatch], fill=tuple(int(v) for v in rgb), outline="black")
        draw.text((x0 + swatch + pad, y), entry, fill="black", font=font)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return canvas.size
