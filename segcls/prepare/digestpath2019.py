"""DigestPath2019 tissue segmentation -> dataset folder: benign / malignant masks, images resized to
1024x1024 as in the paper.

Raw layout (https://digestpath2019.grand-challenge.org; folder names as unpacked from
tissue-train-pos-v1.zip and tissue-train-neg.zip, e.g. under Colonoscopy_tissue_segment_dataset/, in
several public training scripts found with the code search)::

    tissue-train-pos-v1/NAME.jpg + NAME_mask.jpg    positives: mask 255 = malignant, 0 = the rest
    tissue-train-neg/NAME.jpg                       negatives: no mask, benign everywhere

The masks are JPEGs, so their edges carry compression noise: each mask is shrunk by area averaging and
thresholded at 128 (majority of the area). A negative's mask is all benign (0), glass included, as the
challenge labels it; a `_mask.jpg` found beside a negative is used like a positive's. The paper resized
every image to 1024x1024 (aspect not kept); `size=0` keeps the original size. No mpp is recorded (the
challenge does not give one per image). Split: seeded 50/25/25 by image (PAPER.md); images from one
slide can land in different splits, as in the paper's split by image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from segcls.core.errors import DatasetError
from segcls.data.folder import default_split, image_size
from segcls.prepare.common import (
    Summary,
    dataset_writer,
    find_child,
    list_images,
    load_rgb,
    locate_root,
    open_image,
)

CLASSES = ("benign", "malignant")
POSITIVE, NEGATIVE = "tissue-train-pos-v1", "tissue-train-neg"
MASK_SUFFIX = "_mask"


def load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A JPEG mask as class indices: area-averaged to `size`, then >= 128 -> malignant (1)."""
    with open_image(path) as image:
        if image.format == "JPEG":
            image.draft("L", size)
        grey = image.convert("L")
        if grey.size != size:
            grey = grey.resize(size, Image.Resampling.BOX)
        return (np.asarray(grey) >= 128).astype(np.uint8)


def _pairs(folder: Path, need_mask: bool) -> list[tuple[Path, Path | None]]:
    files = list_images(folder, (".jpg", ".jpeg", ".png"))
    masks = {p.stem[: -len(MASK_SUFFIX)]: p for p in files if p.stem.endswith(MASK_SUFFIX)}
    images = {p.stem: p for p in files if not p.stem.endswith(MASK_SUFFIX)}
    for stem, mask in masks.items():
        if stem not in images:
            raise DatasetError(f"mask {mask} has no image beside it (expected {stem}.jpg)")
    if need_mask:
        for stem, image in images.items():
            if stem not in masks:
                raise DatasetError(f"positive image {image} has no mask (expected {stem}{MASK_SUFFIX}.jpg)")
    return [(images[s], masks.get(s)) for s in sorted(images)]


def prepare_digestpath2019(
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    size: int = 1024,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Import the DigestPath2019 tissue-segmentation training set into `out_dir`; see the module docstring."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    root = locate_root(raw_dir, [POSITIVE, NEGATIVE], "DigestPath2019")
    items = _pairs(find_child(root, POSITIVE), need_mask=True) + _pairs(find_child(root, NEGATIVE), False)
    if not items:
        raise DatasetError(f"no images in {root / POSITIVE} or {root / NEGATIVE}")

    names = []
    with dataset_writer(out_dir, overwrite) as writer:
        for image_path, mask_path in tqdm(items, desc="DigestPath2019", unit="img", disable=not progress):
            full = image_size(image_path)
            target = (size, size) if size else full
            if mask_path is None:
                mask = np.zeros(target[::-1], dtype=np.uint8)
            elif image_size(mask_path) != full:
                raise DatasetError(f"mask {mask_path} is {image_size(mask_path)} px but its image is {full}")
            else:
                mask = load_mask(mask_path, target)
            writer.add(image_path.stem, load_rgb(image_path, target), mask, image_path)
            names.append(image_path.stem)
        split = default_split(names, seed)
        writer.finish(CLASSES, split, None)
    positives = sum(m is not None for _, m in items)
    notes = [f"{positives} with masks, {len(items) - positives} all benign"]
    return Summary("digestpath2019", Path(out_dir), list(CLASSES), split, notes=notes)
