"""`segcls-eval CKPT DATASET`: per-class pixel F1 of a checkpoint on a split."""

from __future__ import annotations

import json

import click

from segcls.core.cli import handle_errors, require_extra


@click.command(context_settings={"show_default": True})
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the scores as JSON.")
@handle_errors
def main(checkpoint: str, dataset: str, split: str, output: str | None) -> None:
    """Score CHECKPOINT on DATASET's SPLIT: a per-class table, and JSON with -o."""
    require_extra("train", "torch")
    from segcls.core.atomic import atomic_path
    from segcls.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, dataset, split)
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
