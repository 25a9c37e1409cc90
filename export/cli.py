"""`segcls-export CKPT -o model.onnx [--fp16] [--trt ...]`: a few lines over export_onnx / build_engine."""

from __future__ import annotations

from pathlib import Path

import click

from segcls.cli._common import handle_errors, require_extra


def _multiple_of_16(ctx, param, value: int) -> int:
    if value < 16 or value % 16:
        raise click.BadParameter(f"must be a positive multiple of 16, got {value}")
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="ONNX file to write.")
@click.option("--fp16", is_flag=True, help="FP16 weights and compute (uint8 in, uint8 labels out).")
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

    if build_trt:
        from segcls.runtime.backends.tensorrt import import_tensorrt

        engine = engine or output.with_suffix(".engine")
        check_output_path(engine, (".engine", ".plan", ".trt"))
        import_tensorrt()  # before the slow export: no TensorRT, nothing written
    result = export_onnx(checkpoint, output, fp16=fp16, opset=opset, verify_size=verify_size, log=click.echo)
    click.echo(result.summary())
    if build_trt:
        from segcls.export.tensorrt import build_engine

        built = build_engine(
            output, engine, max_batch=max_batch, tile=tile, workspace_gib=workspace,
            timing_cache=timing_cache, log=click.echo,
        )  # fmt: skip
        click.echo(built.summary())
