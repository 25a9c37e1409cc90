"""`segcls-bench`: each subcommand is a thin layer over a function in its own module of segcls.bench."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Measure segcls: backend latency (`latency`) and whole-slide runs against the loops users write (`slide`)."""


@main.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", required=True, type=click.Path(exists=True, path_type=Path), help="Model for the cohort.")
@click.option("--dataset", required=True, type=click.Path(exists=True, path_type=Path), help="Training dataset.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Results: OUT.json + OUT.md.")
@click.option("--rounds", default=3, show_default=True, help="Rounds; the configurations alternate in each.")
@click.option("--slide-mpp", type=float, default=2.0, show_default=True, help="For slides without an mpp.")
@click.option("--train-args", default="--epochs 1 --steps-per-epoch 6 --batch-size 16 --tile 64 --device cpu")
def cluster(slides, model: Path, dataset: Path, out: Path, rounds: int, slide_mpp: float, train_args: str) -> None:
    """Ray cohort slides/s with 1 vs 2 workers, and torchrun training tiles/s with 1 vs 2 processes."""
    import shlex
    import sys

    from segcls.bench.cluster import ddp_processes, ray_workers, write_results

    opts = dict(tile=256, overlap=32, batch=2, slide_mpp=slide_mpp)
    results = {"ray": ray_workers(list(slides), model, rounds=rounds, **opts)}
    results["ddp"] = ddp_processes(dataset, rounds=rounds, args=tuple(shlex.split(train_args)))
    write_results(out, results, "segcls-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    click.echo(out.with_suffix(".md").read_text())
