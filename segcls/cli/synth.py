"""segcls-synth: synthetic H&E-like data to try the whole pipeline without downloading a dataset."""

from __future__ import annotations

import time
from pathlib import Path

import click

from segcls.core.cli import command, group, output_option, overwrite_option, quiet_option
from segcls.synth.appearance import STAINS


@group("segcls-synth")
def main() -> None:
    """Synthetic histology: a dataset folder to train on, or a whole-slide image to run inference on."""


@command("dataset")
@output_option(
    "Dataset folder to write (dataset.json, images/, masks/, labeled/CLASS/).", required=True, file_okay=False
)
@click.option("--images", default=48, help="Masked images.")
@click.option("--size", default=512, help="Side of the masked images, px: a multiple of 16.")
@click.option("--mpp", default=2.0, help="Resolution, um/px.")
@click.option("--seed", default=0, help="Seeds the layout and stain of every image.")
@click.option("--labeled", default=16, help="Image-level-labelled images per class.")
@click.option("--labeled-size", default=256, help="Side of the labelled images, px: a multiple of 16.")
@click.option(
    "--holdout",
    type=int,
    help="Write a split.json with this many val and this many test images [default: none, the 50/25/25 split].",
)
@click.option("--tile", default=128, help="Tile side of the SEG/CLS tile count in the summary, px.")
@click.option(
    "--stain",
    type=click.Choice(list(STAINS)),
    default="standard",
    help="Staining protocol; the same --seed with another stain gives the same images in other colours.",
)
@overwrite_option("a dataset folder")
@quiet_option
def dataset(
    output: Path,
    images: int,
    size: int,
    mpp: float,
    seed: int,
    labeled: int,
    labeled_size: int,
    holdout: int | None,
    tile: int,
    stain: str,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Write a dataset folder: masked images, their masks, and image-level-labelled images per class."""
    from segcls.synth.appearance import CLASSES
    from segcls.synth.dataset import dataset_tile_kinds, make_dataset

    start = time.perf_counter()
    make_dataset(
        output, images=images, size=size, mpp=mpp, seed=seed, labeled=labeled, labeled_size=labeled_size,
        holdout=holdout, stain=stain, overwrite=overwrite, progress=not quiet,
    )  # fmt: skip
    seg, cls = dataset_tile_kinds(output, tile)
    click.echo(
        f"Wrote {output}: {images} images of {size} px and {len(CLASSES) * labeled} labeled images at {mpp} um/px; "
        f"{tile}-px tiles: {seg} seg, {cls} cls ({time.perf_counter() - start:.1f} s)"
    )


@command("slide")
@output_option("Slide file to write (a pyramidal JPEG BigTIFF, .tif).", required=True, dir_okay=False)
@click.option("--width", required=True, type=int, help="Level-0 width, px.")
@click.option("--height", required=True, type=int, help="Level-0 height, px.")
@click.option("--mpp", default=0.5, help="Level-0 resolution, um/px.")
@click.option("--seed", default=0, help="Seeds the layout and stain.")
@click.option(
    "--mask",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the ground-truth label mask here [default: none].",
)
@click.option("--tile", default=512, help="TIFF tile side, px: a multiple of 16.")
@click.option(
    "--workers", type=click.IntRange(min=1), help="Rendering processes [default: the cores available, at most 8]."
)
@overwrite_option("a slide or mask file")
@quiet_option
def slide(
    output: Path,
    width: int,
    height: int,
    mpp: float,
    seed: int,
    mask: Path | None,
    tile: int,
    workers: int | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Write a pyramidal JPEG BigTIFF slide (and its mask) that OpenSlide opens."""
    from segcls.core.tiff import pyramid_sizes
    from segcls.synth.slide import make_slide

    start = time.perf_counter()
    make_slide(
        output, width, height, mpp=mpp, seed=seed, mask_path=mask, tile=tile, workers=workers,
        progress=not quiet, overwrite=overwrite,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    sizes = pyramid_sizes(width, height, tile)
    mpix = sum(w * h for w, h in sizes) / 1e6
    also = f" and mask {mask}" if mask else ""
    click.echo(
        f"Wrote {output}{also}: {width} x {height} px at {mpp} um/px, {len(sizes)} levels, "
        f"{mpix:.0f} Mpix in {seconds:.1f} s ({mpix / seconds:.1f} Mpix/s)"
    )


main.add_command(dataset)
main.add_command(slide)
