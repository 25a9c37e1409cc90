"""`segcls-prepare`: turn a challenge's raw download into a segcls dataset folder."""

from __future__ import annotations

from collections.abc import Callable

import click

from segcls.core.cli import (
    check_overwrite,
    command,
    group,
    input_path,
    output_option,
    overwrite_option,
    quiet_option,
    require_extra,
)


def _names(_ctx, _param, value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value is not None else None


_output = output_option("Dataset folder to write (written whole or not at all).", required=True, file_okay=False)


def _grammar(fn: Callable) -> Callable:
    """-o/--output, --overwrite and -q/--quiet, shared by every importer (after its own options)."""
    return _output(overwrite_option("a dataset folder")(quiet_option(fn)))


def _raw_dir(fn: Callable) -> Callable:
    return click.argument("raw_dir", type=input_path(file_okay=False))(fn)


_seed = click.option("--seed", default=0, help="Seed of the 50/25/25 split by image.")
_piece_size = click.option(
    "--piece-size",
    type=click.IntRange(min=16),
    default=2048,
    help="Largest side of the images cut from a slide, px.",
)
_slide_mpp = click.option(
    "--slide-mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Level-0 resolution of slides whose metadata lacks it, um/px [default: from the slide].",
)


@group("segcls-prepare")
def main() -> None:
    """Convert a challenge download (RAW_DIR) or slides with QuPath annotations into a dataset folder (-o),
    written whole or not at all."""


@command("bach")
@_raw_dir
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Target resolution of photos and slides, um/px [default: 16 x 0.467 = 7.47, the WSIs' level 2].",
)
@click.option(
    "--parta-downscale",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Shrink part A photos by this factor (16 = the paper) [default: --mpp / 0.42].",
)
@click.option("--wsi", callback=_names, help="Comma-separated WSIs to import, e.g. A01,A06,A08 [default: all].")
@click.option("--train-wsi", callback=_names, help="WSIs for the train split [default: A01,A06,A08 as imported].")
@click.option("--test-wsi", callback=_names, help="WSIs for the test split [default: none]; the rest is val.")
@_piece_size
@_slide_mpp
@_grammar
def bach(
    raw_dir, output, overwrite, quiet, mpp, parta_downscale, wsi, train_wsi, test_wsi, piece_size, slide_mpp
) -> None:
    """ICIAR 2018 BACH photos and annotated WSIs.

    RAW_DIR holds Photos/{Normal,Benign,InSitu,Invasive}/*.tif (part A: image labels -> labeled/) and
    WSI/NAME.svs + NAME.xml (part B: polygons -> images/ + masks/, cut into pieces), or is the folder
    above ICIAR2018_BACH_Challenge/.
    """
    check_overwrite(output, overwrite=overwrite)  # before reading the raw download
    from segcls.prepare.bach import DEFAULT_MPP, prepare_bach

    summary = prepare_bach(
        raw_dir,
        output,
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


@command("gleason2019")
@_raw_dir
@click.option(
    "--size",
    type=click.IntRange(min=0),
    default=1024,
    help="Longest side of the resized cores, px (0 = keep).",
)
@click.option(
    "--ties",
    type=click.Choice(["unlabelled", "higher"]),
    default="unlabelled",
    help="A pixel the pathologists split evenly on: unlabelled (255) or the higher grade.",
)
@_seed
@_grammar
def gleason2019(raw_dir, output, overwrite, quiet, size, ties, seed) -> None:
    """Gleason2019 TMA cores with majority-vote masks.

    RAW_DIR holds 'Train Imgs/*.jpg' and Maps1_T/ .. Maps6_T/ with NAME_classimg_nonconvex.png maps.
    """
    check_overwrite(output, overwrite=overwrite)  # before reading the raw download
    from segcls.prepare.gleason2019 import prepare_gleason2019

    summary = prepare_gleason2019(
        raw_dir, output, size=size, ties=ties, seed=seed, overwrite=overwrite, progress=not quiet
    )
    click.echo(str(summary))


@command("digestpath2019")
@_raw_dir
@click.option(
    "--size",
    type=click.IntRange(min=0),
    default=1024,
    help="Resize every image to SIZE x SIZE px, as the paper (0 = keep).",
)
@_seed
@_grammar
def digestpath2019(raw_dir, output, overwrite, quiet, size, seed) -> None:
    """DigestPath2019 tissue segmentation, benign / malignant.

    RAW_DIR holds tissue-train-pos-v1/ (NAME.jpg + NAME_mask.jpg) and tissue-train-neg/ (NAME.jpg).
    """
    check_overwrite(output, overwrite=overwrite)  # before reading the raw download
    from segcls.prepare.digestpath2019 import prepare_digestpath2019

    summary = prepare_digestpath2019(raw_dir, output, size=size, seed=seed, overwrite=overwrite, progress=not quiet)
    click.echo(str(summary))


@command("glas")
@_raw_dir
@click.option(
    "--split",
    type=click.Choice(["patient", "official"]),
    default="patient",
    help="patient: whole patients into train/val/test (about 50/25/25 of the images); official: testA/testB "
    "are test, the training images split by patient into train and val.",
)
@click.option("--seed", default=0, help="Seed of the patient split.")
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=0.62,
    help="Resolution of the dataset, um/px (the scans are 0.62; 1.24 halves the images).",
)
@_grammar
def glas(raw_dir, output, overwrite, quiet, split, seed, mpp) -> None:
    """GlaS (Warwick-QU colon glands): stroma / benign gland / malignant gland, split by patient.

    RAW_DIR holds train_N.bmp + train_N_anno.bmp (testA_N, testB_N too, if present) and Grade.csv, or is
    the folder above them; a PNG copy of the same files is read as well.
    """
    check_overwrite(output, overwrite=overwrite)  # before reading the raw download
    from segcls.prepare.glas import prepare_glas

    summary = prepare_glas(raw_dir, output, split=split, seed=seed, mpp=mpp, overwrite=overwrite, progress=not quiet)
    click.echo(str(summary))


@command("qupath")
@click.argument("slides", nargs=-1, required=True, type=input_path(dir_okay=False))
@click.option(
    "--annotations",
    "-a",
    multiple=True,
    required=True,
    type=input_path(),
    help="QuPath GeoJSON export(s) (.geojson, .json, .geojson.gz, .zip) or a folder of them, matched to "
    "the slides by name; repeatable.",
)
@click.option(
    "--mpp",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Resolution of the dataset, um/px [default: the first slide's level 0].",
)
@_slide_mpp
@click.option("--classes", callback=_names, help="Comma-separated classes in this order [default: sorted names].")
@click.option(
    "--background",
    metavar="CLASS",
    help="Class name of unannotated pixels inside a Region* annotation [default: none, they are unlabelled].",
)
@_piece_size
@click.option("--val-slides", callback=_names, help="Comma-separated slide names for val [default: seeded split].")
@click.option(
    "--test-slides",
    callback=_names,
    help="Comma-separated slide names for test [default: seeded split]; the rest is train.",
)
@_seed
@click.option(
    "--tile",
    type=click.IntRange(min=16),
    default=128,
    help="Training tile side, px: with fewer than 3 slides, blocks of 4 tiles go to val (and test) with a "
    "margin of one tile from the training pixels.",
)
@click.option(
    "--test-blocks", is_flag=True, help="With fewer than 3 slides, also hold out test blocks (25 % of the area)."
)
@_grammar
def qupath(
    slides, output, annotations, mpp, slide_mpp, classes, background, piece_size, val_slides, test_slides,
    seed, tile, test_blocks, overwrite, quiet,
) -> None:  # fmt: skip
    """Slides + QuPath GeoJSON annotations ("Export objects as GeoJSON").

    Classified polygons -> images/ + masks/ (inner annotations over outer ones, Ignore* = 255, Region* =
    --background); annotations named 'label' -> labeled/CLASS/ (image-level labels). Split by slide; with
    one or two slides, by blocks of the slides (val: 25 % of the annotated pixels).
    """
    check_overwrite(output, overwrite=overwrite)  # before reading the slides
    require_extra("prepare", "shapely")
    from segcls.prepare.qupath import prepare_qupath

    summary = prepare_qupath(
        slides,
        annotations,
        output,
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


for _importer in (bach, gleason2019, digestpath2019, glas, qupath):
    main.add_command(_importer)
