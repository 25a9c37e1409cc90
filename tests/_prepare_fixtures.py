"""Small raw challenge downloads, generated in the official layouts (folder and file names, Aperio
ImageScope XML, per-pathologist map folders, JPEG masks) for the importer tests."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from segcls.core.tiff import write_pyramid

TISSUE = (200, 110, 170)  # H&E pink: saturated, so tissue detection keeps it
GLASS = (246, 246, 246)

# BACH slide: level 0 is 2048 x 1536 at 0.467 um/px, tissue in a box, three annotated regions (level 0 px)
SLIDE_SIZE = (2048, 1536)
SLIDE_MPP = 0.467
TISSUE_BOX = (256, 256, 1792, 1280)  # x0, y0, x1, y1
BACH_REGIONS = [
    ("Benign", [(512, 384), (896, 384), (896, 768), (512, 768)]),
    ("Carcinoma in situ", [(1100, 400), (1500, 400), (1300, 700)]),
    ("Carcinoma invasive", [(1200, 850), (1600, 850), (1600, 1200), (1200, 1200)]),
]
PHOTO_PREFIX = {"Normal": "n", "Benign": "b", "InSitu": "is", "Invasive": "iv"}


def noisy(shape: tuple[int, ...], color: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.asarray(color) + rng.integers(-8, 9, (*shape, 3)), 0, 255).astype(np.uint8)


def write_slide(path: Path, size=SLIDE_SIZE, mpp: float | None = SLIDE_MPP) -> None:
    """A tiled pyramidal TIFF (levels halve) with glass around a box of tissue; OpenSlide reads it."""
    w, h = size
    pixels = noisy((h, w), GLASS)
    x0, y0, x1, y1 = TISSUE_BOX
    pixels[y0:y1, x0:x1] = noisy((y1 - y0, x1 - x0), TISSUE, seed=1)

    def read_tile(level, x, y, tw, th):
        s = 2**level
        return pixels[y * s : (y + th) * s : s, x * s : (x + tw) * s : s]

    write_pyramid(path, size, read_tile, samples=3, tile=256, compression="jpeg", mpp=mpp)


def imagescope_xml(regions: list[tuple[str, list[tuple[float, float]]]], mpp: float = SLIDE_MPP) -> str:
    """Aperio ImageScope annotation XML, the schema of the BACH part B files."""
    root = ET.Element("Annotations", MicronsPerPixel=f"{mpp:.6f}")
    ann = ET.SubElement(root, "Annotation", Id="1", Name="", ReadOnly="0", Type="4", LineColor="65280")
    attrs = ET.SubElement(ann, "Attributes")
    ET.SubElement(attrs, "Attribute", Name="Description", Id="0", Value="")
    regs = ET.SubElement(ann, "Regions")
    headers = ET.SubElement(regs, "RegionAttributeHeaders")
    ET.SubElement(headers, "AttributeHeader", Id="9999", Name="Region", ColumnWidth="-1")
    for i, (text, points) in enumerate(regions, start=1):
        reg = ET.SubElement(regs, "Region", Id=str(i), Type="0", Zoom="0.5", Text=text, NegativeROA="0")
        ET.SubElement(reg, "Attributes")
        verts = ET.SubElement(reg, "Vertices")
        for x, y in points:
            ET.SubElement(verts, "Vertex", X=str(x), Y=str(y), Z="0")
    ET.SubElement(ann, "Plots")
    return '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode")


def write_bach(
    root: Path,
    wsis: tuple[str, ...] = ("A01", "A02"),
    photos_per_class: int = 1,
    photo_size: tuple[int, int] = (320, 240),
    regions=BACH_REGIONS,
) -> Path:
    """ICIAR2018_BACH_Challenge/{Photos/CLASS/*.tif, WSI/NAME.svs + NAME.xml} under `root`."""
    top = root / "ICIAR2018_BACH_Challenge"
    for i, (folder, prefix) in enumerate(PHOTO_PREFIX.items()):
        (top / "Photos" / folder).mkdir(parents=True)
        for k in range(photos_per_class):
            photo = noisy(photo_size[::-1], TISSUE, seed=10 * i + k)
            Image.fromarray(photo).save(top / "Photos" / folder / f"{prefix}{k + 1:03d}.tif")
    (top / "WSI").mkdir()
    for name in wsis:
        write_slide(top / "WSI" / f"{name}.svs")
        (top / "WSI" / f"{name}.xml").write_text(imagescope_xml(regions))
    return top


def core_image(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return noisy(size[::-1], TISSUE, seed=seed)


def write_gleason(root: Path, cores: dict[str, dict[int, np.ndarray]], size=(200, 160)) -> Path:
    """'Train Imgs/NAME.jpg' and 'Maps<k>_T/NAME_classimg_nonconvex.png' for each core's maps {k: map}."""
    (root / "Train Imgs").mkdir(parents=True)
    for i, (name, maps) in enumerate(cores.items()):
        Image.fromarray(core_image(size, seed=i)).save(root / "Train Imgs" / f"{name}.jpg", quality=95)
        for k, values in maps.items():
            folder = root / f"Maps{k}_T"
            folder.mkdir(exist_ok=True)
            Image.fromarray(values.astype(np.uint8), mode="L").save(folder / f"{name}_classimg_nonconvex.png")
    return root


def write_digestpath(root: Path, positives: dict[str, np.ndarray], negatives: list[str], size=(300, 240)) -> Path:
    """Colonoscopy_tissue_segment_dataset/tissue-train-pos-v1/NAME.jpg + NAME_mask.jpg (bool masks saved
    as 0/255 JPEGs, with their compression noise) and tissue-train-neg/NAME.jpg."""
    top = root / "Colonoscopy_tissue_segment_dataset"
    pos, neg = top / "tissue-train-pos-v1", top / "tissue-train-neg"
    pos.mkdir(parents=True)
    neg.mkdir()
    for i, (name, mask) in enumerate(positives.items()):
        Image.fromarray(noisy(mask.shape, TISSUE, seed=i)).save(pos / f"{name}.jpg", quality=90)
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(pos / f"{name}_mask.jpg", quality=75)
    for i, name in enumerate(negatives):
        Image.fromarray(noisy(size[::-1], TISSUE, seed=100 + i)).save(neg / f"{name}.jpg", quality=90)
    return top
