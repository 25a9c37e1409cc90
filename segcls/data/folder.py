"""The dataset folder: find and validate its files, split it by image, and read its pixels.

```
DATASET/dataset.json   {"classes": [...], "colors": [[r,g,b], ...]?, "mpp": float?}
DATASET/images/NAME.{png,jpg,jpeg,tif,tiff}
DATASET/masks/NAME.png            uint8 class index per pixel, 255 = unlabelled
DATASET/labeled/CLASS/*.{png,jpg,jpeg,tif,tiff}   image-level labels only
DATASET/split.json     {"train": [...], "val": [...], "test": [...]}?
```

Images that a split.json leaves out of all three splits are not used.
`open_dataset` does the cheap checks (names, JSON, which files exist); the checks that need pixels
(mask values, image/mask sizes) happen in `load_pair`, when the pixels are read anyway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segcls.core.constants import IMAGE_SUFFIXES, UNLABELLED
from segcls.core.description import default_colors
from segcls.core.errors import DatasetError

SPLITS = ("train", "val", "test")
_SUFFIX_TEXT = ", ".join(IMAGE_SUFFIXES)


@dataclass(frozen=True)
class DatasetFolder:
    root: Path
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    mpp: float | None  # microns per pixel of images/ and labeled/; None = unknown
    images: dict[str, tuple[Path, Path]]  # name -> (image path, mask path)
    labeled: dict[str, list[Path]]  # class name -> image paths with that image-level label
    split: dict[str, list[str]]  # "train" | "val" | "test" -> image names

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def open_dataset(root: str | Path, split_seed: int = 0) -> DatasetFolder:
    """Check a dataset folder's layout and return what it holds (no pixels are decoded)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    classes, colors, mpp = _read_description(root / "dataset.json")
    images = _find_images(root)
    labeled = _find_labeled(root / "labeled", classes)
    split_path = root / "split.json"
    split = _read_split(split_path, images) if split_path.exists() else default_split(images, split_seed)
    return DatasetFolder(root, classes, colors, mpp, images, labeled, split)


def default_split(names: list[str] | dict[str, object], seed: int = 0) -> dict[str, list[str]]:
    """The 50/25/25 train/val/test split by image that the paper uses, seeded.

    With n images, val and test get `max(1, n // 4)` each (val needs n >= 2, test n >= 3) and train
    the rest: every split that can be non-empty is, and from 4 images on train keeps at least half
    (3 images split 1/1/1). Which image goes where depends only on the sorted names and `seed`.
    """
    names = sorted(names)
    n = len(names)
    n_val = max(1, n // 4) if n >= 2 else 0
    n_test = max(1, n // 4) if n >= 3 else 0
    order = [names[i] for i in np.random.default_rng(seed).permutation(n)]
    return {
        "train": sorted(order[n_val + n_test :]),
        "val": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
    }


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image to (H, W, 3) uint8 RGB: greyscale is replicated, alpha is composited on white."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "LA", "RGB", "RGBA", "I", "F", "I;16", "I;16B", "I;16L"):
                im = im.convert("RGBA")  # palette, bilevel, CMYK, YCbCr...
            array = np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise DatasetError(f"cannot read image {path}: {e}") from None
        array = _read_tiff(path)  # compressions or layouts PIL does not decode
    return _as_rgb(array, path)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if path.suffix.lower() not in (".tif", ".tiff"):
            raise DatasetError(f"cannot read image {path}: {e}") from None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return page.imagewidth, page.imagelength
    except Exception as e:  # tifffile raises many types on malformed files
        raise DatasetError(f"cannot read image {path}: {e}") from None


def read_mask(path: str | Path, num_classes: int | None = None) -> np.ndarray:
    """Decode a mask PNG to (H, W) uint8; with `num_classes`, reject values that are not a class or 255."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "1"):
                raise DatasetError(
                    f"{path}: a mask must be an 8-bit single-channel PNG of class indices, found mode {im.mode}"
                )
            mask = np.asarray(im).astype(np.uint8, copy=False)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"cannot read mask {path}: {e}") from None
    if num_classes is not None:
        counts = np.bincount(mask.ravel(), minlength=256)
        bad = np.flatnonzero(counts[num_classes:UNLABELLED])
        if bad.size:
            value = num_classes + int(bad[0])
            raise DatasetError(
                f"{path}: mask value {value} in {counts[value]} pixels is not a class index "
                f"(dataset has {num_classes} classes: 0..{num_classes - 1}, {UNLABELLED} = unlabelled)"
            )
    return mask


def load_pair(ds: DatasetFolder, name: str) -> tuple[np.ndarray, np.ndarray]:
    """An annotated image and its mask, (H, W, 3) and (H, W) uint8, checked against each other."""
    if name not in ds.images:
        raise DatasetError(f"no image named '{name}' in {ds.root / 'images'}")
    image_path, mask_path = ds.images[name]
    image = read_image(image_path)
    mask = read_mask(mask_path, ds.num_classes)
    check_same_size(mask_path, mask.shape, image_path, image.shape)
    return image, mask


def check_same_size(mask_path: Path, mask_shape: tuple, image_path: Path, image_shape: tuple) -> None:
    if tuple(mask_shape[:2]) != tuple(image_shape[:2]):
        (mh, mw), (ih, iw) = mask_shape[:2], image_shape[:2]
        raise DatasetError(f"{mask_path} is {mw}x{mh} pixels but its image {image_path} is {iw}x{ih}")


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None


def _read_description(path: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...], float | None]:
    if not path.is_file():
        raise DatasetError(f'{path} not found: a dataset folder needs dataset.json with {{"classes": [...]}}')
    d = _read_json(path)
    if not isinstance(d, dict):
        raise DatasetError(f"{path} must hold a JSON object with a 'classes' list, found {type(d).__name__}")
    classes = d.get("classes")
    if not isinstance(classes, list) or not classes:
        raise DatasetError(f'{path} has no classes: expected "classes": ["name", ...], found {classes!r}')
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise DatasetError(f"{path}: classes must be distinct non-empty strings, found {classes!r}")
    if len(classes) >= UNLABELLED:
        raise DatasetError(f"{path} has {len(classes)} classes; at most {UNLABELLED - 1} fit in a uint8 mask")
    colors = d.get("colors")
    if colors is None:
        colors = default_colors(len(classes))
    elif not (
        isinstance(colors, list)
        and len(colors) == len(classes)
        and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colors
        )
    ):
        raise DatasetError(f"{path}: colors must be {len(classes)} [r, g, b] lists of 0..255, found {colors!r}")
    mpp = d.get("mpp")
    if mpp is not None and (isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or mpp <= 0):
        raise DatasetError(f"{path}: mpp must be a positive number (microns per pixel), found {mpp!r}")
    return (
        tuple(classes),
        tuple(tuple(c) for c in colors),
        None if mpp is None else float(mpp),
    )


def _listdir(folder: Path) -> list[Path]:
    """Visible entries of a folder, sorted (hidden files such as .DS_Store are not data)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    files = []
    for p in _listdir(folder):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(f"{p}: expected an image file ({_SUFFIX_TEXT}) in {folder}")
        files.append(p)
    return files


def _find_images(root: Path) -> dict[str, tuple[Path, Path]]:
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise DatasetError(f"no images/ folder in {root}")
    images: dict[str, Path] = {}
    for p in _image_files(images_dir):
        if p.stem in images:
            raise DatasetError(f"{images[p.stem]} and {p} have the same name; image names must be unique")
        images[p.stem] = p
    if not images:
        raise DatasetError(f"{images_dir} holds no images ({_SUFFIX_TEXT})")
    masks: dict[str, Path] = {}
    if masks_dir.is_dir():
        for p in _listdir(masks_dir):
            if not p.is_file() or p.suffix.lower() != ".png":
                raise DatasetError(f"{p}: expected a .png mask in {masks_dir}")
            if p.stem not in images:
                raise DatasetError(f"{p} has no image: expected images/{p.stem} with one of {_SUFFIX_TEXT}")
            masks[p.stem] = p
    for name, p in images.items():
        if name not in masks:
            raise DatasetError(f"{p} has no mask: expected {masks_dir / (name + '.png')}")
    return {name: (images[name], masks[name]) for name in images}


def _find_labeled(folder: Path, classes: tuple[str, ...]) -> dict[str, list[Path]]:
    if not folder.is_dir():
        return {}
    labeled = {}
    for sub in _listdir(folder):
        if not sub.is_dir():
            raise DatasetError(f"{sub}: labeled images go in {folder}/CLASS/ (classes: {', '.join(classes)})")
        if sub.name not in classes:
            raise DatasetError(f"{sub}: '{sub.name}' is not a class in dataset.json (classes: {', '.join(classes)})")
        labeled[sub.name] = _image_files(sub)
    return labeled


def _read_split(path: Path, images: dict[str, tuple[Path, Path]]) -> dict[str, list[str]]:
    d = _read_json(path)
    if not isinstance(d, dict):
        raise DatasetError(f'{path} must hold a JSON object {{"train": [...], "val": [...], "test": [...]}}')
    seen: dict[str, str] = {}
    for key, names in d.items():
        if key not in SPLITS:
            raise DatasetError(f"{path}: unknown split '{key}' (expected {', '.join(SPLITS)})")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"{path}: '{key}' must be a list of image names")
        for n in names:
            if n not in images:
                raise DatasetError(f"{path}: '{key}' names '{n}', which is not in images/ (use names without suffix)")
            if n in seen:
                raise DatasetError(f"{path}: image '{n}' is in both '{seen[n]}' and '{key}'")
            seen[n] = key
    return {key: sorted(d.get(key, [])) for key in SPLITS}


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            array = page.asarray()
            if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and array.ndim == 3:
                array = np.moveaxis(array, 0, -1)
    except Exception as e:  # tifffile raises many types on malformed files
        raise DatasetError(f"cannot read image {path}: {e}") from None
    return array


def _as_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype.kind in "ui" and array.dtype.itemsize > 1 and array.min() >= 0 and array.max() <= 65535:
        # 16-bit (older Pillow opens 16-bit PNGs as 32-bit mode "I")
        array = ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise DatasetError(f"{path}: unsupported pixel type {array.dtype} (expected 8- or 16-bit integers)")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise DatasetError(f"{path}: expected a greyscale or RGB(A) image, found pixel array {array.shape}")
    colour = array[..., :-1] if array.shape[2] in (2, 4) else array
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    if array.shape[2] in (2, 4):  # composite on white, as the runtime reads transparent slide pixels
        alpha = array[..., -1:].astype(np.uint16)
        colour = ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(colour)
