"""`segcls-export CKPT -o model.onnx [--fp16 | --int8 --calibrate DATASET] [--trt ...]`: a few lines over
export_onnx / export_int8 / build_engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from segcls.core.cli import handle_errors, require_extra
from segcls.export.quantize import CALIBRATION_METHODS, Int8Options


def _multiple_of_16(ctx, param, value: int) -> int:
    if value < 16 or value % 16:
        raise click.BadParameter(f"must be a positive multiple of 16, got {value}")
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="ONNX file to write.")
@click.option("--fp16", is_flag=True, help="FP16 weights and compute (uint8 in, uint8 labels out).")
@click.option("--int8", is_flag=True, help="INT8 (ONNX Runtime static quantization, CPU); needs --calibrate.")
@click.option("--calibrate", type=click.Path(path_type=Path), help="Dataset folder: its train split calibrates INT8.")
@click.option("--calib-method", type=click.Choice(CALIBRATION_METHODS), default=Int8Options.method, show_default=True)
@click.option("--calib-tiles", type=click.IntRange(min=1), default=Int8Options.tiles, show_default=True)
@click.option("--calib-size", default=Int8Options.tile_size, show_default=True, callback=_multiple_of_16,
              help="Calibration and held-out tile side, px.")  # fmt: skip
@click.option("--int8-fp32", "fp32_modules", help="Network modules left in FP32, comma-separated ('' for none) "
              f"[default: {','.join(Int8Options.fp32_modules)}].")  # fmt: skip
@click.option("--int8-max-fp32", "max_fp32", type=click.IntRange(min=0), default=Int8Options.max_fp32,
              show_default=True, help="When the INT8 model misses verification: at most this many more layers "
              "(convolutions, most sensitive first) kept in FP32 until it passes; 0: --int8-fp32 exactly.")  # fmt: skip
@click.option("--trt", "build_trt", is_flag=True, help="Also build a TensorRT engine (needs a GPU).")
@click.option("--engine", type=click.Path(path_type=Path), help="Engine file [default: OUTPUT with .engine].")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1), help="Engine batch.")
@click.option("--tile", default=1024, show_default=True, callback=_multiple_of_16, help="Engine tile size.")
@click.option("--workspace", default=4.0, show_default=True, type=click.FloatRange(min=0.25), help="GiB.")
@click.option("--timing-cache", type=click.Path(path_type=Path), help="[default: ~/.cache/segcls/...]")
@click.option("--opset", type=click.IntRange(min=17), help="ONNX opset [default: the exporter's].")
@click.option("--verify-size", default=256, show_default=True, callback=_multiple_of_16, hidden=True)
@handle_errors
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
) -> None:
    """Export a segcls CHECKPOINT to a verified ONNX model, and optionally a TensorRT engine."""
    require_extra("export", "torch", "onnx", "onnxscript")
    from segcls.export.onnx_export import check_output_path, export_onnx

    if int8 and (fp16 or build_trt):
        raise click.UsageError("--int8 is a CPU (ONNX Runtime) model: it goes with neither --fp16 nor --trt")
    if int8 != (calibrate is not None):
        raise click.UsageError("--int8 and --calibrate DATASET go together")
    if build_trt:
        from segcls.core.cuda import import_tensorrt

        engine = engine or output.with_suffix(".engine")
        check_output_path(engine, (".engine", ".plan", ".trt"))
        import_tensorrt()  # before the slow export: no TensorRT, nothing written
    if int8:
        from segcls.export.quantize import export_int8

        options = Int8Options(calib_method, calib_tiles, calib_size, max_fp32=max_fp32)
        if fp32_modules is not None:
            modules = tuple(m.strip() for m in fp32_modules.split(",") if m.strip())
            options = replace(options, fp32_modules=modules)
        result = export_int8(
            checkpoint, output, calibrate, options, opset=opset, verify_size=verify_size, log=click.echo
        )
    else:
        result = export_onnx(checkpoint, output, fp16=fp16, opset=opset, verify_size=verify_size, log=click.echo)
    click.echo(result.summary())
    if build_trt:
        from segcls.core.engine import build_engine

        built = build_engine(
            output, engine, max_batch=max_batch, tile=tile, workspace_gib=workspace,
            timing_cache=timing_cache, log=click.echo,
        )  # fmt: skip
        click.echo(built.summary())
