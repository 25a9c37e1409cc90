"""Gleason2019 -> dataset folder: each TMA core with one mask, the pixel-wise majority vote of the
pathologists who annotated it.

Raw layout (https://gleason2019.grand-challenge.org; the unpacked archives as described by public
importers, e.g. the "parses the data from gleason2019.grand-challenge.org" script in the code corpus, and
adfoucart's dataset.py that corrects the release)::

    Train Imgs/slide001_core003.jpg                         ~5000 px RGB cores
    Maps1_T/slide001_core003_classimg_nonconvex.png         one folder per pathologist, Maps1_T..Maps6_T,
    ...                                                     each covering a subset of the cores
    Maps6_T/slide001_core003_classimg_nonconvex.png

Map values: 1 benign, 3/4/5 Gleason grades, 0 where the pathologist drew nothing (glass, unannotated).
Value 6 appears in some maps; adfoucart's correction script calls grades > 5 mistakes for 1 and another
public importer maps 0, 1 and 6 to benign, so 6 -> benign here. Not verified on the files themselves
(registration needed); any other value is an error naming the map.

Vote: at each pixel every map of the core votes for its value, 0 included (as adfoucart's "Majority_Voting"
does); the most frequent value wins; 0 winning -> 255 (unlabelled). Ties (e.g. two pathologists who
disagree) -> 255 by default, so disputed pixels neither train nor score; `ties="higher"` gives the more
severe label instead (the usual clinical rule of reporting the worse pattern).

Classes are fixed: benign, gleason3, gleason4, gleason5 (class indices do not depend on which grades a
subset happens to contain). Cores are shrunk (longest side `size`, default 1024, aspect kept); maps are
shrunk with nearest sampling before the vote, which gives exactly the nearest-sampled full-size vote.
Split: seeded 50/25/25 by core (PAPER.md). The source mpp is not documented well enough to record, so
dataset.json carries no mpp.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segcls.core.constants import UNLABELLED
from segcls.core.errors import DatasetError
from segcls.data.folder import default_split, image_size
from segcls.prepare.common import (
    Summary,
    dataset_writer,
    find_child,
    fit_size,
    list_images,
    load_labels,
    load_rgb,
    locate_root,
    norm,
)

CLASSES = ("benign", "gleason3", "gleason4", "gleason5")
MAP_SUFFIX = "_classimg_nonconvex"
TIES = ("unlabelled", "higher")

# raw map value -> class index (UNLABELLED for "nothing drawn"); values not listed are errors
_RAW_VALUES = {0: UNLABELLED, 1: 0, 3: 1, 4: 2, 5: 3, 6: 0}
_LUT = np.full(256, -1, dtype=np.int16)
for _raw, _cls in _RAW_VALUES.items():
    _LUT[_raw] = _cls
_SEVERITY = np.array([UNLABELLED, 0, 1, 2, 3], dtype=np.uint8)  # ascending: what "higher" prefers


def core_key(stem: str) -> str:
    """slide001_core003 and slide1_core3 are the same core (the map folders differ in zero padding)."""
    m = re.fullmatch(r"slide0*(\d+)_core0*(\d+)", stem, flags=re.IGNORECASE)
    return f"{int(m[1])}_{int(m[2])}" if m else norm(stem)


def to_classes(raw: np.ndarray, path: Path) -> np.ndarray:
    """Raw map values -> class indices; a value outside the known set is an error naming the map."""
    if raw.dtype != np.uint8:
        if raw.min() < 0 or raw.max() > 255:
            raise DatasetError(f"{path}: map values outside 0..255 (expected {', '.join(map(str, _RAW_VALUES))})")
        raw = raw.astype(np.uint8)
    present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
    bad = present[_LUT[present] < 0]
    if bad.size:
        raise DatasetError(f"{path}: unexpected map value {int(bad[0])} (expected {', '.join(map(str, _RAW_VALUES))})")
    return _LUT[raw].astype(np.uint8)


def majority_vote(maps: list[np.ndarray], ties: str = "unlabelled") -> np.ndarray:
    """Pixel-wise majority of class maps (values 0..3 or UNLABELLED); ties -> UNLABELLED or the more severe."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    stack = np.stack(maps)
    counts = np.stack([(stack == v).sum(axis=0, dtype=np.uint8) for v in _SEVERITY])
    if ties == "higher":
        return _SEVERITY[len(_SEVERITY) - 1 - np.argmax(counts[::-1], axis=0)]
    winner = _SEVERITY[np.argmax(counts, axis=0)]
    tied = (counts == counts.max(axis=0)).sum(axis=0) > 1
    winner[tied] = UNLABELLED
    return winner


def _map_folders(root: Path) -> list[Path]:
    folders = sorted(
        (c for c in root.iterdir() if c.is_dir() and re.fullmatch(r"maps\d+t", norm(c.name))),
        key=lambda c: int(re.search(r"\d+", c.name)[0]),
    )
    if not folders:
        raise DatasetError(f"no pathologist map folders (Maps1_T .. Maps6_T) in {root}")
    return folders


def prepare_gleason2019(
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    size: int = 1024,
    ties: str = "unlabelled",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Import a Gleason2019 training download into `out_dir`; see the module docstring."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    root = locate_root(raw_dir, ["Train Imgs"], "Gleason2019")
    images = {core_key(p.stem): p for p in list_images(find_child(root, "Train Imgs"), (".jpg", ".jpeg"))}
    maps: dict[str, list[Path]] = {k: [] for k in images}
    for folder in _map_folders(root):
        for path in sorted(folder.glob("*.png")):
            if not path.stem.lower().endswith(MAP_SUFFIX):
                continue
            key = core_key(path.stem[: -len(MAP_SUFFIX)])
            if key not in images:
                raise DatasetError(f"map {path} has no core image in {find_child(root, 'Train Imgs')}")
            maps[key].append(path)
    annotated = sorted(k for k, v in maps.items() if v)
    if not annotated:
        raise DatasetError(f"no core in {root} has a *{MAP_SUFFIX}.png map")

    names = []
    with dataset_writer(out_dir, overwrite) as writer:
        for key in tqdm(annotated, desc="Gleason2019", unit="core", disable=not progress):
            image_path = images[key]
            full = image_size(image_path)
            for path in maps[key]:
                if image_size(path) != full:
                    raise DatasetError(f"map {path} is {image_size(path)} px but its core {image_path.name} is {full}")
            target = fit_size(full, size)
            votes = [to_classes(load_labels(p, target), p) for p in maps[key]]
            writer.add(image_path.stem, load_rgb(image_path, target), majority_vote(votes, ties), image_path)
            names.append(image_path.stem)
        split = default_split(names, seed)
        writer.finish(CLASSES, split, None)
    notes = [f"ties: {ties}"]
    if len(annotated) < len(images):
        notes.append(f"{len(images) - len(annotated)} cores without maps skipped")
    return Summary("gleason2019", Path(out_dir), list(CLASSES), split, notes=notes)
