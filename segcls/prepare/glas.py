"""GlaS (MICCAI 2015 Gland Segmentation, Warwick-QU colon H&E) -> dataset folder with three classes:
stroma (every pixel outside a gland), benign gland and malignant gland; a gland's pixels take the grade
of its image.

Raw layout, as the challenge's archive unpacks (`Warwick QU Dataset (Released 2016_07_08)/`)::

    train_1.bmp, train_1_anno.bmp, ...          85 training images, 20x, about 0.62 um/px
    testA_1.bmp, testA_1_anno.bmp, ...          60 + 20 test images (the official test parts)
    testB_1.bmp, ...
    Grade.csv                                   name, patient ID, grade (GlaS), grade (Sirinukunwattana...)

`_anno` masks label each gland instance 1..k (0 = not gland); a lossless PNG copy (`train_1.png`,
`train_1_anno.png`, masks 0/255) is read the same way: any value > 0 is gland. Grade.csv's values carry
leading spaces in the release; the grade column reads "benign" or "malignant".

Split: by patient, never by image (the images of one patient look alike, so an image split leaks).
`split="patient"` (default) pools every image found and draws whole patients into val and test until
each holds about a quarter of the images, seeded, retrying until val and test each have both grades;
`split="official"` keeps testA/testB as test and splits the training images by patient into train and
val. Grade.csv rows without an image are skipped (a copy of the training part only is fine); an image
without a row is an error.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcls.core.errors import DatasetError
from segcls.data.folder import image_size
from segcls.prepare.common import Summary, dataset_writer, list_images, load_labels, load_rgb, scaled_size

CLASSES = ("stroma", "benign gland", "malignant gland")
COLORS = ((235, 170, 200), (60, 170, 90), (205, 40, 45))
GRADES = ("benign", "malignant")
MPP = 0.62  # the challenge's 20x scans (Sirinukunwattana et al. 2017)
GRADE_FILE = "Grade.csv"
ANNO_SUFFIX = "_anno"
SPLITS = ("patient", "official")
_TRIES = 2000  # seeded patient orders tried; the one closest to the target sizes wins


@dataclass(frozen=True)
class GlasImage:
    name: str
    image: Path
    mask: Path
    patient: str
    grade: str  # "benign" | "malignant"

    @property
    def official_test(self) -> bool:
        return self.name.lower().startswith("test")


def find_root(raw: str | Path) -> Path:
    """`raw` or its only sub-folder that holds Grade.csv (the archive unpacks into one top folder)."""
    raw = Path(raw)
    if not raw.is_dir():
        raise DatasetError(f"raw GlaS folder not found: {raw}")
    if (raw / GRADE_FILE).is_file():
        return raw
    candidates = [c for c in sorted(raw.iterdir()) if c.is_dir() and (c / GRADE_FILE).is_file()]
    if len(candidates) == 1:
        return candidates[0]
    raise DatasetError(f"{raw} is not a raw GlaS download: no {GRADE_FILE} in it or in one folder below it")


def read_grades(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (patient ID, grade) from Grade.csv (first three columns; the header row is skipped)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [[cell.strip() for cell in row] for row in csv.reader(f) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    if rows and rows[0] and rows[0][0].lower() == "name":
        rows = rows[1:]
    grades = {}
    for line, row in enumerate(rows, start=2):
        if len(row) < 3:
            raise DatasetError(f"{path}, row {line}: expected name, patient ID, grade; found {row}")
        name, patient, grade = row[0], row[1], row[2].lower()
        if grade not in GRADES:
            raise DatasetError(f"{path}, row {line}: grade must be benign or malignant, found {row[2]!r}")
        grades[name] = (patient, grade)
    if not grades:
        raise DatasetError(f"{path} lists no images")
    return grades


def find_images(root: Path) -> list[GlasImage]:
    grades = read_grades(root / GRADE_FILE)
    files = list_images(root, (".bmp", ".png", ".tif", ".tiff"))
    masks = {p.stem[: -len(ANNO_SUFFIX)]: p for p in files if p.stem.endswith(ANNO_SUFFIX)}
    images = {p.stem: p for p in files if not p.stem.endswith(ANNO_SUFFIX)}
    found = []
    for stem, path in sorted(images.items()):
        if stem not in masks:
            raise DatasetError(f"{path} has no annotation (expected {stem}{ANNO_SUFFIX}{path.suffix})")
        if stem not in grades:
            raise DatasetError(f"{path} is not in {root / GRADE_FILE}")
        found.append(GlasImage(stem, path, masks[stem], *grades[stem]))
    for stem, path in masks.items():
        if stem not in images:
            raise DatasetError(f"annotation {path} has no image (expected {stem}.bmp or {stem}.png)")
    if not found:
        raise DatasetError(f"no GlaS images (train_N.bmp + train_N_anno.bmp) in {root}")
    return found


def class_mask(annotation: np.ndarray, grade: str) -> np.ndarray:
    """Instance labels (0 = not gland) -> 0 stroma, 1 benign gland or 2 malignant gland."""
    gland = 1 + GRADES.index(grade)
    return np.where(annotation > 0, gland, 0).astype(np.uint8)


def patient_split(
    images: list[GlasImage], seed: int = 0, val: float = 0.25, test: float = 0.25
) -> dict[str, list[str]]:
    """Whole patients into val and test, about `val` and `test` of the images each, the rest train.

    Seeded: patients are dealt in random orders (each to val, then test, while it fits their target); of
    the draws whose val and test (when not empty) hold both grades, the one closest to the targets wins.
    """
    by_patient: dict[str, list[str]] = {}
    for im in images:
        by_patient.setdefault(im.patient, []).append(im.name)
    grade = {im.name: im.grade for im in images}
    patients = sorted(by_patient, key=_natural)
    both = len(set(grade.values())) == len(GRADES)
    targets = {"val": val * len(images), "test": test * len(images)}
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(_TRIES):
        split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for i in rng.permutation(len(patients)):
            names = by_patient[patients[i]]
            key = next((k for k, t in targets.items() if len(split[k]) + len(names) <= t + 0.5), "train")
            split[key] += names
        if both and not all(len({grade[n] for n in split[k]}) == len(GRADES) for k in targets if targets[k] > 0):
            continue
        cost = sum(abs(len(split[k]) - t) for k, t in targets.items())
        if cost < best_cost:
            best, best_cost = split, cost
    if best is None:
        raise DatasetError("no split by patient gives both grades to val and test: too few patients of one grade")
    return {k: sorted(v, key=_natural_name) for k, v in best.items()}


def prepare_glas(
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "patient",
    seed: int = 0,
    mpp: float = MPP,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Import a GlaS download (or its PNG copy) into `out_dir` at `mpp` microns per pixel (the scans' 0.62
    by default; larger shrinks images with antialiasing and masks with nearest sampling); see the module
    docstring."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not mpp > 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    images = find_images(find_root(raw_dir))
    if split == "official":
        test = [im.name for im in images if im.official_test]
        if not test:
            raise DatasetError(f"--split official needs the testA/testB images; {raw_dir} has none")
        parts = patient_split([im for im in images if not im.official_test], seed, val=0.25, test=0.0)
        parts["test"] = sorted(test)
    else:
        parts = patient_split(images, seed)
    with dataset_writer(out_dir, overwrite) as writer:
        for im in tqdm(images, desc="GlaS", unit="img", disable=not progress):
            size = None if mpp == MPP else scaled_size(image_size(im.image), mpp / MPP)
            rgb = load_rgb(im.image, size)
            mask = class_mask(load_labels(im.mask, size), im.grade)
            if mask.shape != rgb.shape[:2]:
                raise DatasetError(
                    f"annotation {im.mask} is {mask.shape[::-1]} px but {im.image.name} is {rgb.shape[1::-1]}"
                )
            writer.add(im.name, rgb, mask, im.image)
        writer.finish(CLASSES, parts, mpp, COLORS)
    patients = {k: sorted({im.patient for im in images if im.name in v}, key=_natural) for k, v in parts.items()}
    notes = [f"patients train {','.join(patients['train']) or '-'} / val {','.join(patients['val']) or '-'} / "
             f"test {','.join(patients['test']) or '-'}"]  # fmt: skip
    return Summary("glas", Path(out_dir), list(CLASSES), parts, mpp=mpp, notes=notes)


def _natural(text: str) -> tuple:
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _natural_name(name: str) -> tuple:
    """train_2 before train_10."""
    head, _, tail = name.rpartition("_")
    return (head, *_natural(tail))
