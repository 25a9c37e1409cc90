"""`segcls-sweep DATASET -o OUT_DIR`: the paper's S / S+C / S+C* grid over segmentation fractions."""

from __future__ import annotations

import time
from pathlib import Path

import click

from segcls.cli.train import keeps_checkpoint, training_options
from segcls.core.cli import (
    command,
    input_path,
    output_option,
    overwrite_option,
    quiet_option,
    removed_on_failure,
    require_extra,
)

# --quick: the synthetic sweep in well under 30 minutes on 2 CPU cores.
QUICK = {"seeds": 2, "epochs": 4, "steps_per_epoch": 10, "batch_size": 32}
# --full: long enough that S converges at s = 100 % on the synthetic dataset of docs/sweep/README.md,
# at 64-px tiles so that it fits a shared 2-core CPU (one-thread runs, two side by side).
FULL = {"seeds": 2, "epochs": 8, "steps_per_epoch": 50, "batch_size": 16, "tile": 64, "jobs": 2, "threads": 1}


def _preset_text(preset: dict) -> str:
    """A preset in words: `2 seeds, 4 epochs of 10 steps, batch 32`."""
    words = [f"{preset['seeds']} seeds", f"{preset['epochs']} epochs of {preset['steps_per_epoch']} steps"]
    words.append(f"batch {preset['batch_size']}")
    if "tile" in preset:
        words.append(f"{preset['tile']}-px tiles")
    if "jobs" in preset:
        words.append(f"{preset['jobs']} runs side by side of {preset['threads']} thread")
    return ", ".join(words)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated fractions in [0, 1], got {text!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise click.BadParameter(f"expected comma-separated fractions in [0, 1], got {text!r}")
    return values


def _settings(text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise click.BadParameter(f"settings are {', '.join(allowed)}; got {text!r}", param_hint="--settings")
    return values


@command("segcls-sweep")
@click.argument("dataset", type=input_path(file_okay=False))
@output_option(
    "Sweep folder: runs/, results.csv, summary.md, f1_vs_fraction.png. An existing one is continued.",
    required=True,
    file_okay=False,
)
@click.option(
    "--task",
    type=click.Choice(["seg", "cls"]),
    default="seg",
    help="seg: vary s over S,S+C,S+C* (macro F1); cls: vary c over C,S+C,S*+C (classification accuracy).",
)
@click.option("--settings", default=None, help="Comma-separated settings [default: all of the task's].")
@click.option("--fractions", default=None, help="Comma-separated s (or c) in [0, 1] [default: the paper's 14].")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Seeds per (setting, fraction) [default: 5].")
@click.option("--quick", is_flag=True, help=f"Preset for a CPU: s in 0,5,10,100 %, {_preset_text(QUICK)}.")
@click.option(
    "--full", is_flag=True, help=f"Preset for S to converge: s in 0,1,5,10,25,50,100 %, {_preset_text(FULL)}."
)
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Runs trained side by side [default: 1].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch threads per run [default: torch's].")
@training_options
@click.option("--report", is_flag=True, help="Train nothing: write the outputs from the runs finished so far.")
@overwrite_option(help="Retrain the runs that are finished already [default: keep and skip them].")
@quiet_option
def main(
    dataset: Path,
    output: Path,
    task: str,
    settings: str | None,
    fractions: str | None,
    seeds: int | None,
    quick: bool,
    full: bool,
    jobs: int | None,
    threads: int | None,
    report: bool,
    overwrite: bool,
    quiet: bool,
    **train_options,
) -> None:
    """Train every setting x fraction x seed on DATASET, then write results.csv, summary.md and
    f1_vs_fraction.png into the sweep folder.

    A sweep folder is continued: finished runs are kept and skipped (--overwrite retrains them), a stopped
    run resumes from its last.pt. A failed sweep leaves no folder or run that holds no checkpoint.
    """
    require_extra("train", "torch", "matplotlib")
    from segcls.data.settings import CLS_TASK_SETTINGS, SETTINGS
    from segcls.sweep import FULL_FRACTIONS, PAPER_FRACTIONS, QUICK_FRACTIONS, SweepConfig, run_sweep

    if quick and full:
        raise click.UsageError("--quick and --full are two presets: choose one")
    if report and overwrite:
        raise click.UsageError("--report trains nothing: --overwrite has nothing to replace")
    preset, preset_fractions = (QUICK, QUICK_FRACTIONS) if quick else (FULL, FULL_FRACTIONS) if full else ({}, None)
    ctx = click.get_current_context()
    for key, value in preset.items():  # the preset fills what the user did not set explicitly
        if key in train_options and ctx.get_parameter_source(key).name == "DEFAULT":
            train_options[key] = value
    allowed = SETTINGS if task == "seg" else CLS_TASK_SETTINGS
    config = SweepConfig(
        dataset=str(dataset),
        out_dir=str(output),
        task=task,
        settings=_settings(settings, allowed) if settings else allowed,
        fractions=_floats(fractions) if fractions else (preset_fractions or PAPER_FRACTIONS),
        seeds=seeds or preset.get("seeds", 5),
        train_options=train_options,
        jobs=jobs or preset.get("jobs", 1),
        threads=threads or preset.get("threads"),
        train=not report,
        overwrite=overwrite,
    )
    start = time.perf_counter()
    with removed_on_failure(output, keep=keeps_checkpoint):
        rows = run_sweep(config, progress=not quiet)
    click.echo(f"Sweep of {len(rows)} runs done in {time.perf_counter() - start:.0f} s -> {output}/summary.md")
