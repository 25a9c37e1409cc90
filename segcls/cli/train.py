"""`segcls-train DATASET -o RUN_DIR`: train the joint network on a dataset folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click

from segcls.core.cli import (
    command,
    input_path,
    output_option,
    overwrite_option,
    quiet_option,
    removed_on_failure,
    require_extra,
)

_TRAINING_OPTIONS = [
    click.option("--epochs", type=click.IntRange(min=1), default=10, help="Epochs; each ends with validation."),
    click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Tiles per batch (paper: 200)."),
    click.option(
        "--steps-per-epoch",
        type=click.IntRange(min=1),
        default=None,
        help="Optimiser steps per epoch [default: one pass over all train tiles].",
    ),
    click.option("--tile", type=click.IntRange(min=32), default=128, help="Tile side, px: a multiple of 16, >= 32."),
    click.option("--lr", type=float, default=1e-4, help="Adam learning rate."),
    click.option(
        "--split-seed",
        type=int,
        default=0,
        help="Seeds the 50/25/25 split when there is no split.json, and the spatial split of a dataset "
        "without val images.",
    ),
    click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        help="auto: CUDA when torch sees a GPU, else the CPU.",
    ),
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


def keeps_checkpoint(path: Path) -> bool:
    """A run folder with a last.pt is work `--resume` continues: a failed or interrupted run keeps it."""
    return (path / "last.pt").is_file()


@command("segcls-train")
@click.argument("dataset", type=input_path(file_okay=False))
@output_option("Run folder: best.pt, last.pt, log.csv, metrics.json.", required=True, file_okay=False)
@click.option(
    "--setting",
    type=click.Choice(["S", "S+C", "S+C*"]),
    default="S+C",
    help="The paper's setting: S = the SEG tiles only; S+C = plus the CLS tiles of the unused (1 - s) share; "
    "S+C* = plus all CLS tiles.",
)
@click.option("--seg-fraction", type=click.FloatRange(0, 1), default=1.0, help="Fraction s of the SEG tiles used.")
@click.option("--seed", type=int, default=0, help="Seeds weights, tile selection and augmentation.")
@training_options
@click.option("--resume", is_flag=True, help="Continue the run in OUTPUT from its last.pt.")
@overwrite_option(help="Replace the run the folder holds [default: refuse; --resume continues it].")
@quiet_option
def main(dataset: Path, output: Path, resume: bool, overwrite: bool, quiet: bool, **options) -> None:
    """Train on DATASET (segcls folder format) into a run folder: best.pt, last.pt, log.csv, curves.png, metrics.json.

    A folder that holds a run is continued (--resume) or replaced (--overwrite), never trained over. A run
    that fails or is stopped before its first epoch leaves no folder; after it, last.pt stays for --resume.

    Under `torchrun --nproc_per_node N segcls-train ...` the N processes share each batch (--batch-size is
    the global batch) and rank 0 writes the files.
    """
    require_extra("train", "torch", "matplotlib")
    from segcls.train import TrainConfig, train

    start = time.perf_counter()
    config = TrainConfig(dataset=str(dataset), out_dir=str(output), **options)
    with removed_on_failure(output, keep=keeps_checkpoint):
        metrics = train(config, resume=resume, overwrite=overwrite, progress=not quiet)
    if not metrics:  # a torchrun rank other than 0: rank 0 reports
        return
    acc = metrics["cls_accuracy"]
    acc_text = "n/a" if acc is None else f"{acc:.4f}"
    click.echo(
        f"Trained {options['setting']} s={options['seg_fraction']:g} in {time.perf_counter() - start:.0f} s "
        f"({metrics['tiles_per_s']:.1f} tiles/s): {metrics['split']} macro F1 {metrics['macro_f1']:.4f}, "
        f"micro F1 {metrics['micro_f1']:.4f}, cls accuracy {acc_text} -> {output}"
    )
