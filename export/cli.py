"""`segcls-export CKPT -o model.onnx [--fp16 | --int8 --calibrate DATASET] [--trt ...]`: a few lines over
export_onnx / export_int8 / build_engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from segcls.core.cli import (
    check_overwrite,
    command,
    input_path,
    output_option,
    overwrite_option,
    quiet_option,
    removed_on_failure,
    require_extra,
)
from segcls.core.constants import check_multiple
from segcls.core.errors import SegclsError
from segcls.export.quantize import CALIBRATION_METHODS, Int8Options


def _multiple(ctx, param, value: int) -> int:
    try:
        return check_multiple(param.opts[0], value)
    except SegclsError as e:
        raise click.BadParameter(str(e)) from None


_FP32_DEFAULT = ",".join(Int8Options.fp32_modules)


@command("segcls-export")
@click.argument("checkpoint", type=input_path(dir_okay=False))
@output_option("ONNX file to write (.onnx).", required=True, dir_okay=False)
@click.option("--fp16", is_flag=True, help="FP16 weights and compute (uint8 in, uint8 labels out).")
@click.option("--int8", is_flag=True, help="INT8 (ONNX Runtime static quantization, CPU); needs --calibrate.")
@click.option(
    "--calibrate",
    type=input_path(file_okay=False),
    help="Dataset folder whose train split calibrates INT8 [default: none].",
)
@click.option(
    "--calib-method", type=click.Choice(CALIBRATION_METHODS), default=Int8Options.method, help="INT8 calibration."
)
@click.option("--calib-tiles", type=click.IntRange(min=1), default=Int8Options.tiles, help="INT8 calibration tiles.")
@click.option("--calib-size", default=Int8Options.tile_size, callback=_multiple,
              help="Side of the calibration and held-out tiles, px: a multiple of 16.")  # fmt: skip
@click.option(
    "--int8-fp32",
    "fp32_modules",
    metavar="MODULES",
    help=f"Network modules kept in FP32, comma-separated ('' for none) [default: {_FP32_DEFAULT}].",
)
@click.option(
    "--int8-max-fp32",
    "max_fp32",
    type=click.IntRange(min=0),
    default=Int8Options.max_fp32,
    help="When the INT8 model misses verification: at most this many more layers (residual blocks, most "
    "sensitive first) kept in FP32 until it passes; 0: --int8-fp32 exactly.",
)
@click.option("--trt", "build_trt", is_flag=True, help="Also build a TensorRT engine (needs a GPU).")
@click.option(
    "--engine",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Engine file (+ its .json sidecar) [default: OUTPUT with .engine].",
)
@click.option("--max-batch", default=32, type=click.IntRange(min=1), help="Largest batch the engine runs, tiles.")
@click.option("--tile", default=1024, callback=_multiple, help="Engine input side, px: a multiple of 16.")
@click.option("--workspace", default=4.0, type=click.FloatRange(min=0.25), help="TensorRT builder workspace, GiB.")
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TensorRT timing cache, read and updated [default: ~/.cache/segcls/, per TensorRT version and GPU].",
)
@click.option("--opset", type=click.IntRange(min=17), help="ONNX opset [default: the exporter's].")
@click.option("--verify-size", default=256, callback=_multiple, hidden=True)
@overwrite_option("an ONNX or engine file")
@quiet_option
def main(
    checkpoint: Path,
    output: Path,
    fp16: bool,
    int8: bool,
    calibrate: Path | None,
    calib_method: str,
    calib_tiles: int,
    calib_size: int,
    fp32_modules: str | None,
    max_fp32: int,
    build_trt: bool,
    engine: Path | None,
    max_batch: int,
    tile: int,
    workspace: float,
    timing_cache: Path | None,
    opset: int | None,
    verify_size: int,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Export a segcls CHECKPOINT to a verified ONNX model, and optionally a TensorRT engine."""
    if int8 and (fp16 or build_trt):
        raise click.UsageError("--int8 is a CPU (ONNX Runtime) model: it goes with neither --fp16 nor --trt")
    if int8 != (calibrate is not None):
        raise click.UsageError("--int8 and --calibrate DATASET go together")
    from segcls.core.model_info import sidecar_path

    engine = (engine or output.with_suffix(".engine")) if build_trt else None
    check_overwrite(output, engine, engine and sidecar_path(engine), overwrite=overwrite)
    require_extra("export", "torch", "onnx", "onnxscript")
    from segcls.export.onnx_export import check_output_path

    check_output_path(output, (".onnx",))
    if engine:
        from segcls.core.cuda import import_tensorrt

        check_output_path(engine, (".engine", ".plan", ".trt"))
        import_tensorrt()  # before the slow export: no TensorRT, nothing written
    with removed_on_failure(output, engine, engine and sidecar_path(engine)):
        options = Int8Options(calib_method, calib_tiles, calib_size, max_fp32=max_fp32)
        _export(checkpoint, output, int8, fp16, calibrate, options, fp32_modules, opset, verify_size, not quiet)
        if engine:
            from segcls.core.engine import build_engine

            built = build_engine(
                output, engine, max_batch=max_batch, tile=tile, workspace_gib=workspace,
                timing_cache=timing_cache, log=click.echo,
            )  # fmt: skip
            click.echo(built.summary())


def _export(
    checkpoint: Path,
    output: Path,
    int8: bool,
    fp16: bool,
    calibrate: Path | None,
    options: Int8Options,
    fp32_modules: str | None,
    opset: int | None,
    verify_size: int,
    progress: bool,
) -> None:
    """The ONNX model: FP32 / FP16 (export_onnx) or INT8 (export_int8), verified, then its summary line."""
    from segcls.export.onnx_export import export_onnx

    if int8:
        from segcls.export.quantize import export_int8

        if fp32_modules is not None:
            modules = tuple(m.strip() for m in fp32_modules.split(",") if m.strip())
            options = replace(options, fp32_modules=modules)
        result = export_int8(
            checkpoint, output, calibrate, options, opset=opset, verify_size=verify_size, log=click.echo,
            progress=progress,
        )  # fmt: skip
    else:
        result = export_onnx(
            checkpoint, output, fp16=fp16, opset=opset, verify_size=verify_size, log=click.echo, progress=progress
        )
    click.echo(result.summary())
