"""`segcls-prepare`: turn a challenge's raw download into a segcls dataset folder."""

from __future__ import annotations

from collections.abc import Callable

import click

from segcls.core.cli import handle_errors, require_extra


def _names(_ctx, _param, value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value is not None else None


def _common(fn: Callable) -> Callable:
    """RAW_DIR OUT_DATASET, --overwrite and --quiet, shared by every importer."""
    fn = click.option("--quiet", is_flag=True, help="No progress bar.")(fn)
    fn = click.option("--overwrite", is_flag=True, help="Replace OUT_DATASET if it exists.")(fn)
    fn = click.argument("out_dataset", type=click.Path(file_okay=False))(fn)
    return click.argument("raw_dir", type=click.Path(exists=True, file_okay=False))(fn)


_seed = click.option("--seed", default=0, show_default=True, help="Seed of the 50/25/25 split by image.")
_piece_size = click.option(
    "--piece-size",
    type=click.IntRange(min=16),
    default=2048,
    show_default=True,
    help="Largest side of the images cut from a slide.",
)
_slide_mpp = click.option(
    "--slide-mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Microns per level-0 pixel, for slides whose metadata lacks it.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Convert a challenge download (RAW_DIR) or QuPath annotations into a dataset folder (OUT_DATASET),
    written atomically."""


@main.command()
@_common
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Target microns per pixel for photos and slides [default: 16 x 0.467 = 7.47, the WSIs' level 2].",
)
@click.option(
    "--parta-downscale",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Shrink part A photos by this factor instead of mpp / 0.42 (16 = the paper).",
)
@click.option("--wsi", callback=_names, help="Comma-separated WSIs to import, e.g. A01,A06,A08 [default: all].")
@click.option("--train-wsi", callback=_names, help="WSIs for the train split [default: A01,A06,A08 as imported].")
@click.option("--test-wsi", callback=_names, help="WSIs for the test split [default: none]; the rest is val.")
@_piece_size
@_slide_mpp
@handle_errors
def bach(
    raw_dir, out_dataset, overwrite, quiet, mpp, parta_downscale, wsi, train_wsi, test_wsi, piece_size, slide_mpp
) -> None:
    """ICIAR 2018 BACH photos and annotated WSIs.

    RAW_DIR holds Photos/{Normal,Benign,InSitu,Invasive}/*.tif (part A: image labels -> labeled/) and
    WSI/NAME.svs + NAME.xml (part B: polygons -> images/ + masks/, cut into pieces), or is the folder
    above ICIAR2018_BACH_Challenge/.
    """
    from segcls.prepare.bach import DEFAULT_MPP, prepare_bach

    summary = prepare_bach(
        raw_dir,
        out_dataset,
        mpp=mpp or DEFAULT_MPP,
        parta_downscale=parta_downscale,
        wsi=wsi,
        train_wsi=train_wsi,
        test_wsi=test_wsi or (),
        piece_size=piece_size,
        slide_mpp_override=slide_mpp,
        overwrite=overwrite,
        progress=not quiet,
    )
    click.echo(str(summary))


@main.command()
@_common
@click.option(
    "--size",
    type=click.IntRange(min=0),
    default=1024,
    show_default=True,
    help="Longest side of the resized cores (0 = keep).",
)
@click.option(
    "--ties",
    type=click.Choice(["unlabelled", "higher"]),
    default="unlabelled",
    show_default=True,
    help="A pixel the pathologists split evenly on: unlabelled (255) or the higher grade.",
)
@_seed
@handle_errors
def gleason2019(raw_dir, out_dataset, overwrite, quiet, size, ties, seed) -> None:
    """Gleason2019 TMA cores with majority-vote masks.

    RAW_DIR holds 'Train Imgs/*.jpg' and Maps1_T/ .. Maps6_T/ with NAME_classimg_nonconvex.png maps.
    """
    from segcls.prepare.gleason2019 import prepare_gleason2019

    summary = prepare_gleason2019(
        raw_dir, out_dataset, size=size, ties=ties, seed=seed, overwrite=overwrite, progress=not quiet
    )
    click.echo(str(summary))


@main.command()
@_common
@click.option(
    "--size",
    type=click.IntRange(min=0),
    default=1024,
    show_default=True,
    help="Resize every image to SIZE x SIZE, as the paper (0 = keep).",
)
@_seed
@handle_errors
def digestpath2019(raw_dir, out_dataset, overwrite, quiet, size, seed) -> None:
    """DigestPath2019 tissue segmentation, benign / malignant.

    RAW_DIR holds tissue-train-pos-v1/ (NAME.jpg + NAME_mask.jpg) and tissue-train-neg/ (NAME.jpg).
    """
    from segcls.prepare.digestpath2019 import prepare_digestpath2019

    summary = prepare_digestpath2019(
        raw_dir, out_dataset, size=size, seed=seed, overwrite=overwrite, progress=not quiet
    )
    click.echo(str(summary))


@main.command()
@_common
@click.option(
    "--split",
    type=click.Choice(["patient", "official"]),
    default="patient",
    show_default=True,
    help="patient: whole patients into train/val/test (about 50/25/25 of the images); official: testA/testB "
    "are test, the training images split by patient into train and val.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the patient split.")
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=0.62,
    show_default=True,
    help="Microns per pixel of the dataset (the scans are 0.62; 1.24 halves the images).",
)
@handle_errors
def glas(raw_dir, out_dataset, overwrite, quiet, split, seed, mpp) -> None:
    """GlaS (Warwick-QU colon glands): stroma / benign gland / malignant gland, split by patient.

    RAW_DIR holds train_N.bmp + train_N_anno.bmp (testA_N, testB_N too, if present) and Grade.csv, or is
    the folder above them; a PNG copy of the same files is read as well.
    """
    from segcls.prepare.glas import prepare_glas

    summary = prepare_glas(
        raw_dir, out_dataset, split=split, seed=seed, mpp=mpp, overwrite=overwrite, progress=not quiet
    )
    click.echo(str(summary))


@main.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dataset", type=click.Path(file_okay=False))
@click.option(
    "--annotations",
    "-a",
    multiple=True,
    required=True,
    type=click.Path(exists=True),
    help="QuPath GeoJSON export(s) (.geojson, .json, .geojson.gz, .zip) or a folder of them, matched to "
    "the slides by name; repeatable.",
)
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Microns per pixel of the dataset [default: the first slide's level 0].",
)
@_slide_mpp
@click.option("--classes", callback=_names, help="Comma-separated classes in this order [default: sorted names].")
@click.option("--background", help="Class of unannotated pixels inside a Region* annotation [default: 255].")
@_piece_size
@click.option("--val-slides", callback=_names, help="Comma-separated slide names for val [default: seeded split].")
@click.option("--test-slides", callback=_names, help="Comma-separated slide names for test; the rest is train.")
@_seed
@click.option(
    "--tile",
    type=click.IntRange(min=16),
    default=128,
    show_default=True,
    help="Training tile size, px: with fewer than 3 slides, blocks of 4 tiles go to val (and test) with a "
    "margin of one tile from the training pixels.",
)
@click.option(
    "--test-blocks", is_flag=True, help="With fewer than 3 slides, also hold out test blocks (25 % of the area)."
)
@click.option("--overwrite", is_flag=True, help="Replace OUT_DATASET if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def qupath(
    slides, out_dataset, annotations, mpp, slide_mpp, classes, background, piece_size, val_slides, test_slides,
    seed, tile, test_blocks, overwrite, quiet,
) -> None:  # fmt: skip
    """Slides + QuPath GeoJSON annotations ("Export objects as GeoJSON").

    Classified polygons -> images/ + masks/ (inner annotations over outer ones, Ignore* = 255, Region* =
    --background); annotations named 'label' -> labeled/CLASS/ (image-level labels). Split by slide; with
    one or two slides, by blocks of the slides (val: 25 % of the annotated pixels).
    """
    require_extra("prepare", "shapely")
    from segcls.prepare.qupath import prepare_qupath

    summary = prepare_qupath(
        slides,
        annotations,
        out_dataset,
        mpp=mpp,
        slide_mpp=slide_mpp,
        classes=classes,
        background=background,
        piece_size=piece_size,
        val_slides=val_slides or (),
        test_slides=test_slides or (),
        seed=seed,
        tile=tile,
        test_blocks=test_blocks,
        overwrite=overwrite,
        progress=not quiet,
    )
    click.echo(str(summary))


if __name__ == "__main__":
    main()
