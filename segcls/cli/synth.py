"""segcls-synth: synthetic H&E-like data to try the whole pipeline without downloading a dataset."""

from __future__ import annotations

import time
from pathlib import Path

import click

from segcls.core.cli import handle_errors
from segcls.synth.appearance import STAINS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Synthetic histology: a dataset folder to train on, or a whole-slide image to run inference on."""


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--images", default=48, show_default=True, help="Masked images.")
@click.option("--size", default=512, show_default=True, help="Masked image side, px (multiple of 16).")
@click.option("--mpp", default=2.0, show_default=True, help="Microns per pixel.")
@click.option("--seed", default=0, show_default=True)
@click.option("--labeled", default=16, show_default=True, help="Image-level-labelled images per class.")
@click.option("--labeled-size", default=256, show_default=True, help="Their side, px.")
@click.option("--holdout", type=int, help="Write a split.json with this many val and test images each.")
@click.option("--tile", default=128, show_default=True, help="Tile size for the seg/cls tile count.")
@click.option(
    "--stain",
    type=click.Choice(list(STAINS)),
    default="standard",
    show_default=True,
    help="Staining protocol; the same --seed with another stain gives the same images in other colours.",
)
@handle_errors
def dataset(
    out: Path,
    images: int,
    size: int,
    mpp: float,
    seed: int,
    labeled: int,
    labeled_size: int,
    holdout: int | None,
    tile: int,
    stain: str,
) -> None:
    """Write a dataset folder OUT (dataset.json, images/, masks/, labeled/CLASS/)."""
    from segcls.synth.appearance import CLASSES
    from segcls.synth.dataset import dataset_tile_kinds, make_dataset

    start = time.perf_counter()
    make_dataset(
        out,
        images=images,
        size=size,
        mpp=mpp,
        seed=seed,
        labeled=labeled,
        labeled_size=labeled_size,
        holdout=holdout,
        stain=stain,
    )
    seg, cls = dataset_tile_kinds(out, tile)
    click.echo(
        f"Wrote {out}: {images} images of {size} px and {len(CLASSES) * labeled} labeled images at {mpp} um/px; "
        f"{tile}-px tiles: {seg} seg, {cls} cls ({time.perf_counter() - start:.1f} s)"
    )


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--width", required=True, type=int, help="Level-0 width, px.")
@click.option("--height", required=True, type=int, help="Level-0 height, px.")
@click.option("--mpp", default=0.5, show_default=True, help="Microns per level-0 pixel.")
@click.option("--seed", default=0, show_default=True)
@click.option("--mask", type=click.Path(path_type=Path), help="Also write the ground-truth mask here.")
@click.option("--tile", default=512, show_default=True, help="TIFF tile size, px (multiple of 16).")
@click.option("--workers", type=int, help="Rendering processes [default: CPU count].")
@handle_errors
def slide(
    out: Path, width: int, height: int, mpp: float, seed: int, mask: Path | None, tile: int, workers: int | None
) -> None:
    """Write a pyramidal JPEG BigTIFF slide OUT (and its mask) that OpenSlide opens."""
    from segcls.core.tiff import pyramid_sizes
    from segcls.synth.slide import make_slide

    start = time.perf_counter()
    make_slide(out, width, height, mpp=mpp, seed=seed, mask_path=mask, tile=tile, workers=workers)
    seconds = time.perf_counter() - start
    sizes = pyramid_sizes(width, height, tile)
    mpix = sum(w * h for w, h in sizes) / 1e6
    also = f" and mask {mask}" if mask else ""
    click.echo(
        f"Wrote {out}{also}: {width} x {height} px at {mpp} um/px, {len(sizes)} levels, "
        f"{mpix:.0f} Mpix in {seconds:.1f} s ({mpix / seconds:.1f} Mpix/s)"
    )
