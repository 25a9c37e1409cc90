"""ICIAR 2018 BACH -> dataset folder: part A photos as image-level labels, part B WSIs + XML polygons as
masks, both at one resolution (PAPER.md: the labelled photos must match the scale of the slides).

Raw layout (https://iciar2018-challenge.grand-challenge.org/Dataset/; the zenodo archive
ICIAR2018_BACH_Challenge.zip as listed by kaiko-ai/eva docs/datasets/bach.md)::

    ICIAR2018_BACH_Challenge/Photos/{Normal,Benign,InSitu,Invasive}/*.tif   2048x1536, 0.42 um/px
    ICIAR2018_BACH_Challenge/WSI/A01.svs + A01.xml ... A10.svs + A10.xml    Aperio, ~0.467 um/px

The XML is Aperio ImageScope's: Annotations[@MicronsPerPixel]/Annotation/Regions/Region[@Text]/
Vertices/Vertex[@X, @Y] in level-0 pixels. Where the class lives is read as the authors did
(ozanciga/learning-to-segment utils/read_xml.py): Region/Attributes/Attribute[@Value] if present, else
Region[@Text], matched by substring ("benign", "in situ", "invasive"); public BACH readers show Text values
"Benign", "Carcinoma in situ", "Carcinoma invasive". Not verified against the files themselves (they need
registration): matching is case-insensitive, accepts "insitu"/"in-situ" and also "normal". Later regions
paint over earlier ones (file order), as cv2.fillPoly did in the authors' code.

Masks follow the challenge: inside a polygon its class; outside every polygon but on tissue "normal" (0);
glass 255. Tissue is found as the runtime finds it (segcls.runtime.tissue.tissue_mask, on a thumbnail
at about the output resolution), so ground truth and inference agree on what is glass. Each WSI is cut
into images of at most `piece_size` px named NAME_xX_yY (top left in output pixels); pieces with under
1% labelled pixels are left out.

Resolution: the paper read the WSIs at pyramid level 2 (downsample 16: 16 x 0.467 = 7.47 um/px) and shrank
the photos by 16 (0.42 x 16 = 6.72 um/px, 11% finer). Here both go to one target `mpp` (default 7.47):
the slide is read at the finest level not finer than needed and resampled; the photos are shrunk by
mpp / 0.42 unless `parta_downscale` (16 = the paper) is given.

Split by WSI: the authors validated on A02, A03, A04, A05, A07, A09, A10 (their exp_results.csv), so the
default training WSIs are A01, A06, A08; every imported WSI not named for train or test is validation.
Part A (labeled/) joins the training split only (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from segcls.core.constants import UNLABELLED
from segcls.core.errors import DatasetError
from segcls.data.folder import image_size
from segcls.prepare.common import (
    Summary,
    dataset_writer,
    find_child,
    list_images,
    load_rgb,
    locate_root,
    norm,
    scaled_size,
)

CLASSES = ("normal", "benign", "insitu", "invasive")  # = the challenge's labels 0..3 (metrics.bach_score)
PHOTO_FOLDERS = ("Normal", "Benign", "InSitu", "Invasive")  # same order as CLASSES
PARTA_MPP = 0.42  # challenge dataset page
WSI_MPP = 0.467  # the BACH slides' level 0 as reported for them (each slide's own metadata is what is used)
DEFAULT_MPP = 16 * WSI_MPP  # pyramid level 2 of the BACH slides, as in the paper
PAPER_TRAIN_WSIS = ("A01", "A06", "A08")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff")
MIN_TISSUE = 0.01  # pieces with less labelled area than this are dropped
MAX_THUMBNAIL = 4096  # largest side of the thumbnail the tissue is detected on


@dataclass
class Region:
    label: int
    points: np.ndarray  # (N, 2) float, level-0 pixels (x, y)


def region_class(text: str) -> int | None:
    t = text.lower()
    if "situ" in t:
        return CLASSES.index("insitu")
    for i, name in enumerate(CLASSES):
        if name in t:
            return i
    return None


def read_annotations(path: Path) -> tuple[list[Region], float | None]:
    """Polygons of an ImageScope XML and its MicronsPerPixel (None when absent)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise DatasetError(f"cannot parse annotation XML {path}: {e}") from None
    regions = []
    for i, region in enumerate(root.iter("Region"), start=1):
        rid = region.get("Id", str(i))
        texts = [a.get("Value", "") for a in region.findall("./Attributes/Attribute")]
        texts.append(region.get("Text", ""))
        label = next((c for c in map(region_class, texts) if c is not None), None)
        if label is None:
            found = ", ".join(repr(t) for t in texts if t) or "no class text"
            raise DatasetError(
                f"{path}: region {rid} has unknown class ({found}); expected one of "
                "Normal, Benign, Carcinoma in situ, Carcinoma invasive"
            )
        try:
            points = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: region {rid} has a vertex without numeric X/Y") from None
        if len(points) < 3:
            raise DatasetError(f"{path}: region {rid} has {len(points)} vertices (a polygon needs >= 3)")
        regions.append(Region(label, np.asarray(points)))
    if not regions:
        raise DatasetError(f"{path}: no <Region> with <Vertices> (not a BACH annotation file?)")
    mpp = root.get("MicronsPerPixel")
    try:
        mpp = float(mpp) if mpp else None
    except ValueError:
        mpp = None
    return regions, (mpp if mpp and mpp > 0 else None)


def rasterize(base: np.ndarray, regions: Sequence[Region], scale: float, origin: tuple[int, int]) -> np.ndarray:
    """Paint `regions` onto a copy of `base` (h, w). A level-0 point p lands on target pixel
    p / scale - origin: `scale` is level-0 px per target px, `origin` the piece's top left in target px."""
    h, w = base.shape
    image = Image.fromarray(base.astype(np.uint8), mode="L")
    draw = ImageDraw.Draw(image)
    for region in regions:
        pts = region.points / scale - np.asarray(origin, dtype=float)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        if hi[0] < 0 or hi[1] < 0 or lo[0] >= w or lo[1] >= h:
            continue
        draw.polygon([tuple(p) for p in pts], fill=region.label, outline=region.label)
    return np.asarray(image)


def open_slide(path: Path):
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError) as e:
        raise DatasetError(f"cannot open slide {path}: {e}") from None


def slide_mpp(slide, xml_mpp: float | None, override: float | None, path: Path) -> float:
    """Microns per level-0 pixel: the override, else the slide's metadata, else the XML's."""
    if override:
        return override
    try:
        mpp = float(slide.properties.get("openslide.mpp-x", "nan"))
    except ValueError:
        mpp = math.nan
    if mpp > 0:
        return mpp
    if xml_mpp:
        return xml_mpp
    raise DatasetError(f"{path} has no microns-per-pixel in its metadata or XML; pass --slide-mpp")


def slide_pieces(
    slide, regions: Sequence[Region], scale: float, piece: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield (x, y, rgb, mask) pieces of at most `piece` px, `scale` level-0 px per output px; (x, y) in
    output pixels. Read at the finest level not finer than needed, then resampled (only ever shrunk,
    unless the target is finer than level 0). Pieces under MIN_TISSUE labelled area are skipped."""
    from segcls.runtime.tissue import tissue_mask

    width, height = (math.floor(d / scale + 1e-6) for d in slide.dimensions)
    level = max(i for i, d in enumerate(slide.level_downsamples) if d <= max(scale, 1.0) * 1.001)
    down = slide.level_downsamples[level]
    tissue = tissue_mask(slide, thumbnail_size=min(max(width, height), MAX_THUMBNAIL))
    for y in range(0, height, piece):
        for x in range(0, width, piece):
            w, h = min(piece, width - x), min(piece, height - y)
            size = (math.ceil(w * scale / down), math.ceil(h * scale / down))
            rgba = slide.read_region((round(x * scale), round(y * scale)), level, size)
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(white, rgba).convert("RGB")
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), Image.Resampling.LANCZOS)
            # tissue mask pixel under each output pixel's centre
            rows = _mask_index(y, h, scale / tissue.downsample, tissue.mask.shape[0])
            cols = _mask_index(x, w, scale / tissue.downsample, tissue.mask.shape[1])
            base = np.where(tissue.mask[np.ix_(rows, cols)], CLASSES.index("normal"), UNLABELLED)
            mask = rasterize(base, regions, scale, (x, y))
            if np.mean(mask != UNLABELLED) >= MIN_TISSUE:
                yield x, y, np.asarray(rgb), mask


def _mask_index(start: int, n: int, factor: float, limit: int) -> np.ndarray:
    return np.minimum(((start + np.arange(n) + 0.5) * factor).astype(np.intp), limit - 1)


def _annotated_slides(wsi_dir: Path) -> dict[str, tuple[Path, Path]]:
    slides = {p.stem: p for p in sorted(wsi_dir.iterdir()) if p.suffix.lower() in SLIDE_SUFFIXES}
    pairs = {}
    for xml in sorted(wsi_dir.glob("*.[xX][mM][lL]")):
        slide = slides.get(xml.stem) or next((p for s, p in slides.items() if norm(s) == norm(xml.stem)), None)
        if slide is None:
            raise DatasetError(f"annotation {xml} has no slide beside it (expected {xml.stem}.svs)")
        pairs[slide.stem] = (slide, xml)
    if not pairs:
        raise DatasetError(f"no annotated WSI (.svs + .xml pair) in {wsi_dir}")
    return pairs


def _pick(names: Sequence[str], available: Sequence[str], what: str) -> list[str]:
    by_norm = {norm(a): a for a in available}
    picked = []
    for name in names:
        if norm(name) not in by_norm:
            raise DatasetError(f"{what} '{name}' is not an imported annotated WSI ({', '.join(available)})")
        picked.append(by_norm[norm(name)])
    return picked


def prepare_bach(
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    mpp: float = DEFAULT_MPP,
    parta_downscale: float | None = None,
    wsi: Sequence[str] | None = None,
    train_wsi: Sequence[str] | None = None,
    test_wsi: Sequence[str] = (),
    piece_size: int = 2048,
    slide_mpp_override: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Import a BACH download into `out_dir`; see the module docstring for the choices made."""
    if mpp <= 0 or (parta_downscale is not None and parta_downscale <= 0) or piece_size < 16:
        raise ValueError(
            f"need mpp > 0, parta_downscale > 0, piece_size >= 16; got {mpp}, {parta_downscale}, {piece_size}"
        )
    root = locate_root(raw_dir, ["Photos", "WSI"], "BACH")
    photos_dir, wsi_dir = find_child(root, "Photos"), find_child(root, "WSI")
    photo_dirs = [find_child(photos_dir, name) for name in PHOTO_FOLDERS]
    known = {norm(n) for n in PHOTO_FOLDERS}
    for child in photos_dir.iterdir():
        if child.is_dir() and not child.name.startswith((".", "__")) and norm(child.name) not in known:
            raise DatasetError(f"unknown class folder {child} (expected {', '.join(PHOTO_FOLDERS)})")

    pairs = _annotated_slides(wsi_dir)
    selected = _pick(wsi, list(pairs), "--wsi") if wsi else list(pairs)
    if train_wsi is None:
        train = [s for s in selected if norm(s) in {norm(t) for t in PAPER_TRAIN_WSIS}]
    else:
        train = _pick(train_wsi, selected, "--train-wsi")
    test = _pick(test_wsi, selected, "--test-wsi")
    if set(train) & set(test):
        raise DatasetError(f"WSIs in both --train-wsi and --test-wsi: {', '.join(sorted(set(train) & set(test)))}")
    annotations = {s: read_annotations(pairs[s][1]) for s in selected}  # all XML errors before any work

    factor = parta_downscale or mpp / PARTA_MPP
    photos = [(c, p) for c, d in zip(CLASSES, photo_dirs, strict=True) for p in list_images(d)]
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    labeled = dict.fromkeys(CLASSES, 0)
    with dataset_writer(out_dir, overwrite) as writer:
        for cls, path in tqdm(photos, desc="BACH part A", unit="img", disable=not progress):
            size = scaled_size(image_size(path), factor)
            writer.add_labeled(cls, path.stem, load_rgb(path, size))
            labeled[cls] += 1
        for name in tqdm(selected, desc="BACH WSIs", unit="slide", disable=not progress):
            slide_path = pairs[name][0]
            regions, xml_mpp = annotations[name]
            key = "train" if name in train else "test" if name in test else "val"
            with open_slide(slide_path) as slide:
                scale = mpp / slide_mpp(slide, xml_mpp, slide_mpp_override, slide_path)
                for x, y, rgb, mask in slide_pieces(slide, regions, scale, piece_size):
                    piece_name = f"{name}_x{x:05d}_y{y:05d}"
                    writer.add(piece_name, rgb, mask, slide_path)
                    split[key].append(piece_name)
        writer.finish(CLASSES, split, mpp)
    empty = [c for c, n in labeled.items() if n == 0]
    notes = [f"WSIs train {', '.join(train) or '-'} / test {', '.join(test) or '-'} / rest val"]
    if empty:
        notes.append(f"no part A images for {', '.join(empty)}")
    return Summary("bach", Path(out_dir), list(CLASSES), split, labeled, mpp, notes)
