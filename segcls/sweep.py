"""The paper's experiment grid: every setting x segmentation fraction x seed, one training run each.

Resumable: a run with metrics.json is done and skipped; a run with last.pt is resumed, and so is a finished
run when the sweep asks for more epochs than it had (a sweep is lengthened in place). The summary reports
mean +- std over seeds, also normalised to S at s = 100% as the paper's figures do.

`jobs` > 1 trains that many runs side by side in worker processes, each with `threads` torch threads: on
a small CPU whose cores are shared, one-thread runs side by side waste less time in OpenMP spin-waits than
one two-thread run (docs/sweep/README.md has the measurement).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segcls.core.atomic import atomic_path
from segcls.core.errors import SegclsError

if TYPE_CHECKING:
    from segcls.train import TrainConfig

PAPER_FRACTIONS = (0.0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0)
QUICK_FRACTIONS = (0.0, 0.05, 0.1, 1.0)
FULL_FRACTIONS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
# At fraction 0 these settings select the same tiles as S+C (its complement is everything), so with the
# same seed they are the same run: it is trained once and reported under both names.
SAME_AT_ZERO = {("seg", "S+C*"): "S+C", ("cls", "S*+C"): "S+C"}
RESULT_FIELDS = (
    "task",
    "setting",
    "fraction",
    "seed",
    "macro_f1",
    "micro_f1",
    "cls_accuracy",
    "seg_tiles",
    "cls_tiles",
    "val_f1_last3_change",
)
FLAT = 0.01  # a run has converged when its last 3 validation macro F1 lie within 1 point


@dataclass
class SweepConfig:
    dataset: str
    out_dir: str
    settings: Sequence[str] = ("S", "S+C", "S+C*")
    fractions: Sequence[float] = PAPER_FRACTIONS
    seeds: int = 5
    task: str = "seg"  # "seg": vary s over S / S+C / S+C*; "cls": vary c over C / S+C / S*+C
    train_options: dict = field(default_factory=dict)  # TrainConfig fields shared by every run
    jobs: int = 1  # runs trained side by side
    threads: int | None = None  # torch threads per run (None: torch's default)
    train: bool = True  # False: only report the runs already finished (a sweep stopped early)
    overwrite: bool = False  # retrain the runs that are finished already


def run_dir(out_dir: Path, task: str, setting: str, fraction: float, seed: int) -> Path:
    if fraction == 0:
        setting = SAME_AT_ZERO.get((task, setting), setting)
    slug = setting.replace("*", "star")
    letter = "s" if task == "seg" else "c"
    return out_dir / "runs" / f"{'' if task == 'seg' else 'cls-'}{slug}_{letter}{fraction:g}_seed{seed}"


def run_sweep(config: SweepConfig, progress: bool = True) -> list[dict]:
    """Train every missing run, then write results.csv, summary.md and f1_vs_fraction.png."""
    from tqdm import tqdm

    from segcls.train import TrainConfig

    if config.seeds < 1:
        raise SegclsError(f"seeds must be >= 1, got {config.seeds}")
    if config.jobs < 1:
        raise SegclsError(f"jobs must be >= 1, got {config.jobs}")
    out = Path(config.out_dir)
    base = TrainConfig(dataset=config.dataset, out_dir="", **config.train_options)
    base.validate()  # bad options fail here, not in a worker, and before any folder is made
    out.mkdir(parents=True, exist_ok=True)
    todo: dict[Path, TrainConfig] = {}
    for fraction, seed, setting in _run_order(config):
        directory = run_dir(out, config.task, setting, fraction, seed)
        if not config.train or directory in todo:
            continue
        varied = {"seg_fraction": fraction} if config.task == "seg" else {"cls_fraction": fraction}
        if fraction == 0:  # the run that stands for both settings (run_dir) trains as the one it is named after
            setting = SAME_AT_ZERO.get((config.task, setting), setting)
        run = replace(base, out_dir=str(directory), task=config.task, setting=setting, seed=seed, **varied)
        if config.overwrite or not _done(directory, run):
            todo[directory] = run

    def finished() -> list[dict]:  # results so far, rewritten after every run: a stopped sweep still has them
        rows = collect_results(out, config.task, config.settings, config.fractions, config.seeds)
        if rows:
            write_results(out, rows)
        return rows

    bar = tqdm(total=len(todo), desc="sweep", disable=not progress)
    if config.jobs == 1 or len(todo) < 2:
        _set_threads(config.threads)
        for run in todo.values():
            _train_one(run, config.overwrite)
            finished()
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(config.jobs, context, initializer=_set_threads, initargs=(config.threads,)) as pool:
            try:
                for job in as_completed([pool.submit(_train_one, run, config.overwrite) for run in todo.values()]):
                    job.result()
                    finished()
                    bar.update()
            except BaseException:  # a failed run or Ctrl-C: say so now, not after every queued run has trained
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    bar.close()
    rows = finished()
    if not rows:
        raise SegclsError(f"no finished runs under {out / 'runs'}")
    return rows


def _run_order(config: SweepConfig) -> list[tuple[float, int, str]]:
    """(fraction, seed, setting), the two ends of the curve first: s = 100 % (where the settings should
    meet), then from the smallest s up, each fraction seed by seed, so a sweep stopped early has whole
    comparisons rather than one setting's curve."""
    fractions = sorted(config.fractions, key=lambda f: (f != 1.0, f))
    return [(f, seed, s) for f in fractions for seed in range(config.seeds) for s in config.settings]


def _done(directory: Path, run: TrainConfig) -> bool:
    """metrics.json is there, was written after at least `run.epochs` epochs, and by a run with `run`'s
    settings: a run made with others (another preset in the same folder) is refused, not mixed in."""
    from segcls.train import changed_settings

    path = directory / "metrics.json"
    if not path.is_file():
        return False
    saved = json.loads(path.read_text()).get("config")
    if saved is None:  # no settings recorded: nothing to compare, counted as done as before
        return True
    changed = changed_settings(saved, run)
    if changed:
        raise SegclsError(
            f"{directory} holds a run made with other settings ({', '.join(changed)}): "
            "use another output folder for this sweep"
        )
    return int(saved.get("epochs", run.epochs)) >= run.epochs


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _train_one(run, overwrite: bool = False) -> None:
    """One run, resumed from its last.pt when there is one, else (or with `overwrite`) trained from scratch
    over whatever its folder holds: the sweep owns its run folders (module level: a worker process calls it)."""
    from segcls.train import train

    resume = not overwrite and (Path(run.out_dir) / "last.pt").is_file()
    train(run, resume=resume, overwrite=not resume, progress=False)


def collect_results(
    out: Path, task: str, settings: Sequence[str], fractions: Sequence[float], seeds: int
) -> list[dict]:
    rows = []
    for setting in settings:
        for fraction in fractions:
            for seed in range(seeds):
                path = run_dir(out, task, setting, fraction, seed) / "metrics.json"
                if not path.is_file():
                    continue
                m = json.loads(path.read_text())
                rows.append(
                    {
                        "task": task,
                        "setting": setting,
                        "fraction": fraction,
                        "seed": seed,
                        "macro_f1": m["macro_f1"],
                        "micro_f1": m["micro_f1"],
                        "cls_accuracy": m.get("cls_accuracy"),
                        "seg_tiles": m["train_tiles"]["seg"],
                        "cls_tiles": m["train_tiles"]["cls"],
                        "val_f1_last3_change": last3_change(path.parent / "log.csv"),
                    }
                )
    return rows


def last3_change(log: Path) -> float | None:
    """max - min of the validation macro F1 of a run's last 3 epochs (None with fewer than 3)."""
    if not log.is_file():
        return None
    with open(log, newline="") as f:
        values = [float(r["val_macro_f1"]) for r in csv.DictReader(f)][-3:]
    return max(values) - min(values) if len(values) == 3 else None


def aggregate(rows: list[dict], metric: str) -> dict[tuple[str, float], tuple[float, float, int]]:
    """(setting, fraction) -> (mean, std, n) of a metric over seeds."""
    groups: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        if r[metric] is not None:
            groups.setdefault((r["setting"], float(r["fraction"])), []).append(float(r[metric]))
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def summary_markdown(rows: list[dict]) -> str:
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fractions = sorted({float(r["fraction"]) for r in rows})
    task = rows[0]["task"]
    letter = "s" if task == "seg" else "c"
    lines = [f"# Sweep summary (task {task}: {letter} = fraction of the {'SEG' if task == 'seg' else 'CLS'} tiles)", ""]
    for metric in _metrics(task):
        agg = aggregate(rows, metric)
        if not agg:
            continue
        baseline = "S" if task == "seg" else "C"
        reference = agg.get((baseline, 1.0), (math.nan,))[0]
        lines += [f"## {metric} (mean +- std over seeds; in brackets: relative to {baseline} at {letter}=100%)", ""]
        lines += [f"| {letter} | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
        for f in fractions:
            cells = []
            for s in settings:
                if (s, f) not in agg:
                    cells.append("")
                    continue
                mean, std, n = agg[(s, f)]
                rel = f" [{mean / reference:.2f}]" if reference and not math.isnan(reference) else ""
                cells.append(f"{100 * mean:.1f} +- {100 * std:.1f}{rel} (n={n})")
            lines.append(f"| {100 * f:g}% | " + " | ".join(cells) + " |")
        lines.append("")
    if task == "seg":
        lines += _claim_lines(aggregate(rows, "macro_f1"), fractions)
    lines += _convergence_lines(rows)
    return "\n".join(lines) + "\n"


def _convergence_lines(rows: list[dict]) -> list[str]:
    """Which runs at fraction 100% were still learning: validation macro F1 moved >= 1 point over the last 3."""
    runs = [r for r in rows if float(r["fraction"]) == 1.0 and r.get("val_f1_last3_change") not in (None, "")]
    if not runs:
        return []
    lines = [
        f"## Convergence at 100% (validation macro F1, max - min over the last 3 validations; flat: < {100 * FLAT:g})",
        "",
    ]
    for r in runs:
        change = float(r["val_f1_last3_change"])
        verdict = "flat" if change < FLAT else "still moving"
        lines.append(f"- {r['setting']} seed {r['seed']}: {100 * change:.1f} points ({verdict})")
    return [*lines, ""]


def _metrics(task: str) -> tuple[str, ...]:
    return ("macro_f1", "micro_f1", "cls_accuracy") if task == "seg" else ("cls_accuracy", "macro_f1")


def _claim_lines(agg: dict, fractions: list[float]) -> list[str]:
    """The paper's claim, checked on these numbers: S+C / S+C* beat S by >= 15% relative at s <= 10%."""
    lines = ["## The paper's claim on these runs", ""]
    for f in [f for f in fractions if f <= 0.1]:
        if ("S", f) not in agg:
            continue
        s = agg[("S", f)][0]
        for other in ("S+C", "S+C*"):
            if (other, f) in agg:
                gain = agg[(other, f)][0] / s - 1 if s > 0 else math.inf
                verdict = "holds" if gain >= 0.15 else "does not hold"
                lines.append(f"- s={100 * f:g}%: {other} vs S: {100 * gain:+.1f}% relative macro F1 ({verdict})")
    at_full = {name: m for (name, f), (m, _, _) in agg.items() if f == 1.0}
    if len(at_full) > 1:
        spread = 100 * (max(at_full.values()) - min(at_full.values()))
        values = ", ".join(f"{name} {100 * m:.1f}" for name, m in at_full.items())
        lines.append(f"- s=100%: {values}: spread {spread:.1f} points (the paper: the settings end up equal)")
    return [*lines, ""]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    task = rows[0]["task"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for ax, metric in zip(axes, _metrics(task)[:2], strict=True):
        agg = aggregate(rows, metric)
        for s in settings:
            pts = sorted((f, m, sd) for (name, f), (m, sd, _) in agg.items() if name == s)
            x = np.array([100 * p[0] for p in pts])
            mean, std = np.array([p[1] for p in pts]), np.array([p[2] for p in pts])
            ax.plot(x, 100 * mean, marker="o", label=s)
            ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), alpha=0.2)
        ax.set(
            xlabel=f"{'segmentation' if task == 'seg' else 'classification'} tiles used (%)",
            ylabel=f"{metric.replace('_', ' ')} (%)",
            title=metric,
        )
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_results(out: Path, rows: list[dict]) -> None:
    if not rows:
        raise SegclsError(f"no finished runs under {out / 'runs'}")
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(rows))
    plot(rows, out / "f1_vs_fraction.png")
