"""`segcls-train DATASET -o RUN_DIR`: train the joint network on a dataset folder."""

from __future__ import annotations

import time
from collections.abc import Callable

import click

from segcls.core.cli import handle_errors, require_extra

_TRAINING_OPTIONS = [
    click.option("--epochs", type=click.IntRange(min=1), default=10),
    click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Tiles per batch (paper: 200)."),
    click.option(
        "--steps-per-epoch", type=click.IntRange(min=1), default=None, help="Default: one pass over all train tiles."
    ),
    click.option("--tile", type=click.IntRange(min=32), default=128, help="Tile size in px (multiple of 16)."),
    click.option("--lr", type=float, default=1e-4, help="Adam learning rate."),
    click.option(
        "--split-seed",
        type=int,
        default=0,
        help="Seeds the 50/25/25 split when there is no split.json, and the spatial split of a dataset "
        "without val images.",
    ),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto"),
    click.option(
        "--pretrained",
        default=None,
        help="Encoder initialisation: 'imagenet' (torchvision's ResNet-18, downloaded once and cached), a URL, "
        "or a file (torchvision / timm ResNet-18, the self-supervised histology checkpoint, a segcls "
        "checkpoint) [default: none, random].",
    ),
    click.option(
        "--mode",
        type=click.Choice(["two-step", "joint"]),
        default="two-step",
        help="two-step = the paper; joint = the released code's single mixed forward.",
    ),
    click.option(
        "--cls-batch-size",
        type=click.IntRange(min=1),
        default=None,
        help="Classification tiles per step in two-step mode [default: --batch-size, the paper].",
    ),
    click.option(
        "--cls-weight",
        type=click.FloatRange(min=0),
        default=1.0,
        help="w in L = L_seg + w * L_cls (the paper: 1).",
    ),
    click.option(
        "--cls-balance",
        type=click.Choice(["loss", "sampler", "none"]),
        default="loss",
        help="Rare classification classes: inverse-frequency loss weights (the paper), class-balanced "
        "sampling with an unweighted loss, or neither.",
    ),
    click.option(
        "--hed-jitter",
        type=click.FloatRange(0, 1, max_open=True),
        default=0.0,
        help="HED stain jitter strength, natural-log optical density (Tellez et al. 2019: 0.05 light, 0.2 "
        "strong); 0 = off, the paper.",
    ),
]


def training_options(fn: Callable) -> Callable:
    """The TrainConfig options shared by segcls-train and segcls-sweep."""
    for option in reversed(_TRAINING_OPTIONS):
        fn = option(fn)
    return fn


@click.command(context_settings={"show_default": True})
@click.argument("dataset", type=click.Path(file_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--setting", type=click.Choice(["S", "S+C", "S+C*"]), default="S+C", help="Paper setting.")
@click.option("--seg-fraction", type=click.FloatRange(0, 1), default=1.0, help="Fraction s of segmentation tiles.")
@click.option("--seed", type=int, default=0, help="Seeds weights, tile selection and augmentation.")
@training_options
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/last.pt.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@handle_errors
def main(dataset: str, out_dir: str, resume: bool, quiet: bool, **options) -> None:
    """Train on DATASET (segcls folder format) into RUN_DIR: best.pt, last.pt, log.csv, curves.png, metrics.json.

    Under `torchrun --nproc_per_node N segcls-train ...` the N processes share each batch (--batch-size is
    the global batch) and rank 0 writes the files.
    """
    require_extra("train", "torch", "matplotlib")
    from segcls.train import TrainConfig, train

    start = time.perf_counter()
    metrics = train(TrainConfig(dataset=dataset, out_dir=out_dir, **options), resume=resume, progress=not quiet)
    if not metrics:  # a torchrun rank other than 0: rank 0 reports
        return
    acc = metrics["cls_accuracy"]
    acc_text = "n/a" if acc is None else f"{acc:.4f}"
    click.echo(
        f"Trained {options['setting']} s={options['seg_fraction']:g} in {time.perf_counter() - start:.0f} s "
        f"({metrics['tiles_per_s']:.1f} tiles/s): {metrics['split']} macro F1 {metrics['macro_f1']:.4f}, "
        f"micro F1 {metrics['micro_f1']:.4f}, cls accuracy {acc_text} -> {out_dir}"
    )
