"""segcls-infer: segment whole-slide images with an exported model (a thin layer over `infer_slide`)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from segcls.core.cli import (
    check_input,
    command,
    input_path,
    output_option,
    overwrite_option,
    quiet_option,
    removed_on_failure,
)
from segcls.runtime.backends import BACKENDS, PRECISIONS
from segcls.runtime.outputs import AUTO, EXTRA_OUTPUTS, expand_slides
from segcls.runtime.stitch import STITCH_MODES
from segcls.runtime.tiling import DEFAULT_OVERLAP

LOCAL_RAY = "local"  # the value of a bare `--ray`: start Ray on this machine


def _extra_option(kind: str, what: str):
    return click.option(
        f"--{kind}",
        is_flag=False,
        flag_value=AUTO,
        default=None,
        metavar="PATH",
        help=f"Also write {what}. Bare: next to the mask as NAME{EXTRA_OUTPUTS[kind]}; with several slides "
        "PATH is a folder [default: not written].",
    )


@command("segcls-infer")
@click.argument("slides", nargs=-1, required=True)
@output_option("Mask file (one slide) or folder (several slides, a folder or a glob, or --ray).", required=True)
@click.option(
    "--model",
    required=True,
    type=input_path(dir_okay=False),
    help="Exported .onnx, TensorRT .engine (+ its .json sidecar) or training checkpoint .pt.",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    help="auto: for an .onnx the fastest of ONNX Runtime and OpenVINO that verifies on this machine (timed once "
    "per model and machine, cached in ~/.cache/segcls/backends); else the backend of the model file, on the "
    "fastest device that really runs here.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="[default: an exported model's own; torch: fp16 on CUDA, fp32 on the CPU] bf16: an FP32 .onnx on "
    "OpenVINO, on CPUs with AVX512-BF16 or AMX, checked against FP32 before use; torch: fp32 is IEEE (no TF32), "
    "tf32 allows TF32 on CUDA.",
)
@click.option("--batch", default=4, help="Tiles per inference call.")
@click.option("--tile", default=1024, help="Tile side at the read resolution, px: a multiple of 16.")
@click.option(
    "--overlap", default=DEFAULT_OVERLAP, help="Context on each side of a tile, read-resolution px: a multiple of 16."
)
@click.option(
    "--stitch",
    type=click.Choice(STITCH_MODES),
    default="crop",
    help="crop: each pixel from the one tile whose centre holds it; blend: smooth average.",
)
@click.option("--mpp", type=float, help="Read at this resolution, um/px [default: the model's training mpp].")
@click.option(
    "--slide-mpp",
    type=float,
    help="The slide's level-0 um/px, for slides that lack it or lie [default: from the slide's metadata].",
)
@click.option(
    "--level",
    type=int,
    help="Read this pyramid level as is (no resampling; mpp may be unknown) [default: the level --mpp needs].",
)
@click.option("--out-mpp", type=float, help="Mask resolution, um/px [default: the slide's level 0].")
@click.option(
    "--tissue",
    default="auto",
    metavar="auto|none|PATH",
    help="Tissue detection on a thumbnail, every tile, or a mask image (nonzero = tissue).",
)
@click.option(
    "--trim/--no-trim",
    default=True,
    help="CPU backends, crop stitching: run each tile cut down to the tissue in its centre, split where "
    "the tissue is scattered (same --overlap of context per pixel, less network work); --no-trim runs "
    "whole tiles.",
)
@_extra_option("overlay", "a thumbnail PNG with the labels drawn over it")
@_extra_option("geojson", "the regions as QuPath GeoJSON (level-0 px)")
@click.option(
    "--geojson-per-region",
    is_flag=True,
    help="GeoJSON: one annotation per connected region [default: one MultiPolygon per class].",
)
@click.option(
    "--geojson-min-area",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="UM2",
    help="GeoJSON: leave out regions smaller than this many um^2 (0 keeps all).",
)
@_extra_option("probs", "class probabilities at stride 8, float16 (C, H/8, W/8) .npy")
@_extra_option("summary", "a JSON summary (areas, slide class, timings)")
@click.option(
    "--truth",
    type=input_path(dir_okay=False),
    help="Ground-truth label mask (segcls TIFF, 255 = unlabelled): pixel F1 in the result line and summary "
    "[default: none].",
)
@click.option(
    "--workers",
    default="auto",
    metavar="auto|N",
    help="Tile reader threads; auto: 1 per 8 cores beside a CPU backend, all cores but one beside a GPU.",
)
@click.option(
    "--sessions",
    default="auto",
    metavar="auto|N",
    help="ONNX Runtime on the CPU: N sessions sharing the cores run tiles side by side; auto: 2 from 2 cores on.",
)
@click.option(
    "--skip-damaged",
    is_flag=True,
    help="A stored tile the decoder refuses (corrupt or cut-short data) is read as glass, its region is 255 "
    "(unlabelled) in the mask and listed in --summary [default: stop the slide with one line naming the tile].",
)
@overwrite_option(help="Redo slides whose outputs exist [default: skip them, saying so].")
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value=LOCAL_RAY,
    default=None,
    metavar="[ADDRESS]",
    help="Run the slides on Ray, one task per slide; OUTPUT is a folder. Bare: a local Ray instance on this "
    "machine's cores; 'auto' or ray://host:port: an existing cluster. Needs 'segcls[cluster]' [default: no Ray].",
)
@click.option("--ray-workers", type=int, help="Ray workers, each holding one model [default: as many as fit].")
@click.option("--ray-cpus", default=1.0, help="CPUs per slide task (ONNX Runtime threads).")
@click.option("--ray-gpus", type=float, help="GPUs per slide task [default: 1 if the cluster has GPUs, else 0].")
@click.option("--ray-retries", default=2, help="Retries of a slide whose Ray worker died.")
@quiet_option
def main(slides, output: Path, model: Path, overwrite: bool, quiet: bool, ray_address: str | None, **options) -> None:
    """Segment SLIDE... and write NAME.mask.tif pyramids (+ the optional outputs).

    With one slide OUTPUT is the mask file; with several (or a folder or glob, or --ray) OUTPUT is a folder,
    and a table of the slides done / skipped / failed ends the run, also written as OUTPUT/cohort.csv.
    Slides whose outputs exist are skipped (--overwrite redoes them). Every slide, the model and a --tissue
    mask must exist before the model is opened. A failed run removes the folders it made and, for one
    slide, its outputs; a cohort keeps the slides it finished.
    """
    paths, many = expand_slides(slides)
    for path in paths:
        check_input(path, "slide")
    if options["tissue"] not in ("auto", "none"):
        check_input(options["tissue"], "tissue mask")
    folders = [Path(options[k]) for k in EXTRA_OUTPUTS if options[k] not in (None, AUTO)]
    keep = Path.is_file if many or ray_address is not None else None  # a cohort keeps its finished slides
    with removed_on_failure(output, *folders, keep=keep):
        _infer(paths, many, output, model, overwrite, quiet, ray_address, **options)


def _infer(
    paths: list[Path], many: bool, out: Path, model: Path, overwrite: bool, quiet: bool, ray_address: str | None,
    **options,
) -> None:  # fmt: skip
    from segcls.runtime.cohort import LocalRunner, ModelSpec, infer_cohort
    from segcls.runtime.options import InferOptions
    from segcls.runtime.outputs import plan_outputs, slide_options
    from segcls.runtime.pipeline import infer_slide
    from segcls.runtime.ray_runner import RayRunner

    ray = {k.removeprefix("ray_"): options.pop(k) for k in ("ray_workers", "ray_cpus", "ray_gpus", "ray_retries")}
    if options["truth"] is not None and (many or ray_address):
        raise click.UsageError("--truth scores one slide: give a single SLIDE")
    extras = {k: options.pop(k) for k in EXTRA_OUTPUTS}
    precision = options.pop("precision")
    opts = InferOptions(progress=not quiet, **options)
    spec = ModelSpec.of(model, opts, precision)
    if ray_address is None and not many:  # one slide: its error is the command's error
        outputs = plan_outputs(paths[0], out, False, extras)
        if not overwrite and all(p.exists() for p in outputs.values()):
            click.echo(f"{paths[0].name}: done already ({outputs['mask']}); --overwrite to redo", err=True)
            return
        with spec.open(log=lambda message: click.echo(message, err=True)) as backend:
            click.echo(f"Backend: {backend.name} on {backend.device}", err=True)
            result = infer_slide(paths[0], backend, outputs["mask"], slide_options(opts, outputs))
        click.echo(result.line)
        return
    if ray_address is None:
        runner = LocalRunner()
    else:
        address = None if ray_address == LOCAL_RAY else ray_address
        runner = RayRunner(address, ray["workers"], ray["cpus"], ray["gpus"], ray["retries"])
    cohort = infer_cohort(paths, spec, out, dataclasses.replace(opts, **extras), runner=runner, overwrite=overwrite)
    click.echo(cohort.table)
    if cohort.failed:
        click.echo(f"{cohort.failed} of {cohort.run} slides failed.", err=True)
        sys.exit(1)
