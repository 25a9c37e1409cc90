"""`segcls-eval CKPT DATASET`: per-class pixel F1 of a checkpoint on a split."""

from __future__ import annotations

import json
from pathlib import Path

import click

from segcls.core.cli import (
    check_overwrite,
    command,
    input_path,
    output_option,
    overwrite_option,
    quiet_option,
    require_extra,
)


@command("segcls-eval")
@click.argument("checkpoint", type=input_path(dir_okay=False))
@click.argument("dataset", type=input_path(file_okay=False))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", help="The split scored.")
@output_option("Also write the scores as JSON here [default: print only].", dir_okay=False)
@overwrite_option("a JSON file")
@quiet_option
def main(checkpoint: Path, dataset: Path, split: str, output: Path | None, overwrite: bool, quiet: bool) -> None:
    """Score CHECKPOINT on DATASET's SPLIT: a per-class table, and JSON with -o."""
    from segcls.core.atomic import atomic_path, check_writable

    if output:
        check_overwrite(output, overwrite=overwrite)
        check_writable(output)
    require_extra("train", "torch")
    from segcls.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, dataset, split, progress=not quiet)
    width = max(len(n) for n in result["per_class_f1"])
    click.echo(f"{'class':<{width}}  F1")
    for name, f1 in result["per_class_f1"].items():
        click.echo(f"{name:<{width}}  {'n/a' if f1 is None else f'{f1:.4f}'}")
    acc = result["cls_accuracy"]
    acc_text = "n/a" if acc is None else f"{acc:.4f}"
    click.echo(
        f"macro F1 {result['macro_f1']:.4f}  micro F1 {result['micro_f1']:.4f}  "
        f"cls accuracy {acc_text}  ({result['images']} {split} images)"
    )
    if output:
        with atomic_path(output) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
