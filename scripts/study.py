"""The experiment studies behind docs/glas.md and docs/stain.md: queues of training runs, trained side by side
(default two at a time, one torch thread each), resumable, with a results CSV rewritten as each run finishes.

    python scripts/study.py run glas --data GLAS_DATASET --out OUT [--stage main] [--factor-s 0.05] [--hed 0.1]
    python scripts/study.py run stain --data SYNTH_ROOT --out OUT      # makes the 3 stain copies if missing
    python scripts/study.py report glas --out OUT                      # markdown tables on stdout
    python scripts/study.py list glas                                  # the runs, in queue order

A run is one `segcls.train` run in OUT/STAGE/runs/NAME (the segcls-sweep naming). Done = its metrics.json was
written with the same settings (stopped runs continue from last.pt; a finished run of another setting is an
error, not overwritten). A stage that `extends` another continues copies of that stage's finished runs to
more epochs (each epoch's randomness derives from (seed, epoch), so this is the longer run itself). No
wall-clock limits: the runs may be paused (SIGSTOP) and continued. Run it under `nice` with
OMP_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segcls.sweep import run_dir

SEEDS = 3


@dataclass(frozen=True)
class Stage:
    name: str
    cells: tuple[tuple[str, float], ...]  # (setting, s)
    options: dict = field(default_factory=dict)  # TrainConfig fields over the study's base
    extends: str | None = None  # continue this stage's finished runs (same setting, s, seed)
    label: str = ""  # what the stage changes, for the report


@dataclass(frozen=True)
class Run:
    stage: Stage
    setting: str
    fraction: float
    seed: int
    config: dict  # TrainConfig fields
    source: str | None  # run folder to continue from (extends)
    eval_datasets: dict  # name -> dataset folder whose test split best.pt is scored on (stain study)

    @property
    def out(self) -> Path:
        return Path(self.config["out_dir"])


def grid(settings: tuple[str, ...], fractions: tuple[float, ...], skip=()) -> tuple[tuple[str, float], ...]:
    return tuple((s, f) for f in fractions for s in settings if (s, f) not in skip)


# -- the GlaS study ---------------------------------------------------------------------------------------
# GlaS at 1.24 um/px (half the scans' resolution) with 64-px tiles: the same 80 um field per tile as 128-px
# tiles at 0.62 um/px, a quarter of the compute (the paper's BACH runs read WSIs at 7.47 um/px).
GLAS_BASE = dict(tile=64, batch_size=16, steps_per_epoch=50, epochs=12, lr=1e-4, device="cpu")
MAIN_FRACTIONS = (1.0, 0.01, 0.02, 0.05, 0.1, 0.25)


def glas_stages(factor_s: float, hed: float) -> list[Stage]:
    """The recipe's map, then one change at a time at s = `factor_s` (S+C only where S cannot change)."""
    at = grid(("S", "S+C"), (factor_s,))
    sc = at[1:]
    epochs = GLAS_BASE["epochs"]
    batch = GLAS_BASE["batch_size"]
    return [
        Stage("main", grid(("S", "S+C"), MAIN_FRACTIONS, skip={("S+C", 1.0)}), label="the paper's recipe"),
        Stage(
            "length",
            (*at, ("S", 1.0)),
            {"epochs": 2 * epochs},
            extends="main",
            label=f"{2 * epochs} epochs (twice the steps)",
        ),
        Stage("cls-weight-2", sc, {"cls_weight": 2.0}, label="CLS loss weight 2"),
        Stage("cls-batch", sc, {"cls_batch_size": 2 * batch}, label=f"{2 * batch} CLS tiles per step"),
        Stage("sampler", sc, {"cls_balance": "sampler"}, label="class-balanced CLS sampling"),
        Stage("joint", sc, {"mode": "joint", "batch_size": 2 * batch}, label=f"joint mode, mixed batch {2 * batch}"),
        Stage("hed", sc, {"hed_jitter": hed}, label=f"HED jitter {hed:g}"),
    ]


# -- the stain study --------------------------------------------------------------------------------------
STAIN_DATA = dict(images=64, size=256, mpp=2.0, seed=0, labeled=16, labeled_size=128, holdout=8)
STAIN_BASE = dict(tile=64, batch_size=16, steps_per_epoch=50, epochs=6, lr=1e-4, device="cpu")
TEST_STAINS = ("standard", "macenko", "strong-h")


def stain_stages() -> list[Stage]:
    """Three strengths at STAIN_BASE's length, then the same runs continued to twice the steps."""
    cell = (("S", 1.0),)  # every mask tile: what the stain does to segmentation alone
    short = [
        Stage("hed-0", cell, {"hed_jitter": 0.0}, label="no HED jitter (the paper)"),
        Stage("hed-0.05", cell, {"hed_jitter": 0.05}, label="HED jitter 0.05"),
        Stage("hed-0.2", cell, {"hed_jitter": 0.2}, label="HED jitter 0.2"),
    ]
    longer = {"epochs": 2 * STAIN_BASE["epochs"]}
    return short + [
        Stage(f"{s.name}-long", cell, {**s.options, **longer}, extends=s.name, label=f"{s.label}, twice the steps")
        for s in short
    ]


def plan(study: str, data: Path, out: Path, stages: list[str] | None, factor_s: float, hed: float) -> list[Run]:
    """Every run of the study in queue order: stage by stage; in a stage, s = 100 % first, then the smallest s
    up, seed by seed, so a stopped queue has whole comparisons."""
    if study == "glas":
        all_stages, base, evals = glas_stages(factor_s, hed), GLAS_BASE, {}
        dataset = data
    else:
        all_stages, base = stain_stages(), STAIN_BASE
        dataset = data / "standard"
        evals = {stain: str(data / stain) for stain in TEST_STAINS}
    chosen = [s for s in all_stages if stages is None or s.name in stages]
    runs = []
    for stage in chosen:
        order = sorted(stage.cells, key=lambda c: (c[1] != 1.0, c[1]))
        for fraction in dict.fromkeys(f for _, f in order):
            for seed in range(SEEDS):
                for setting in (s for s, f in order if f == fraction):
                    folder = run_dir(out / stage.name, "seg", setting, fraction, seed)
                    config = {**base, **stage.options, "dataset": str(dataset), "out_dir": str(folder)}
                    config.update(setting=setting, seg_fraction=fraction, seed=seed)
                    source = None
                    if stage.extends:
                        source = str(run_dir(out / stage.extends, "seg", setting, fraction, seed))
                    runs.append(Run(stage, setting, fraction, seed, config, source, evals))
    return runs


# -- running ----------------------------------------------------------------------------------------------
def is_done(run: Run, strict: bool = True) -> bool:
    """Trained to its epochs and scored. A finished run of other settings in its folder is an error with
    `strict` (training would go over it), and just not this run without (recording the results)."""
    from segcls.train import TrainConfig, changed_settings

    path = run.out / "metrics.json"
    if not path.is_file():
        return False
    saved = json.loads(path.read_text())["config"]
    changed = changed_settings(saved, TrainConfig(**run.config))
    if changed and not strict:
        return False
    if changed:
        raise SystemExit(f"{run.out} holds a run with other settings ({', '.join(changed)}): use another --out")
    if int(saved["epochs"]) < run.config["epochs"]:
        return False
    return all((run.out / f"eval_{name}.json").is_file() for name in run.eval_datasets)


def _threads() -> None:
    import torch

    torch.set_num_threads(1)


def train_run(run: Run) -> str:
    """Train (or continue) one run, then score it on the extra datasets; module level: workers call it."""
    from segcls.core.atomic import atomic_path
    from segcls.evaluate import evaluate_checkpoint
    from segcls.train import TrainConfig, train

    if run.source and not (run.out / "last.pt").is_file():
        source = Path(run.source)
        if not (source / "metrics.json").is_file():
            raise RuntimeError(f"{run.out} continues {source}, which has not finished: run its stage first")
        shutil.copytree(source, run.out, ignore=shutil.ignore_patterns("eval_*.json"))
    start = time.perf_counter()
    train(TrainConfig(**run.config), resume=(run.out / "last.pt").is_file(), progress=False)
    for name, dataset in run.eval_datasets.items():
        result = evaluate_checkpoint(run.out / "best.pt", dataset, "test")
        with atomic_path(run.out / f"eval_{name}.json") as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    return f"{run.out.parent.parent.name}/{run.out.name} ({time.perf_counter() - start:.0f} s)"


def make_stain_data(root: Path) -> None:
    from segcls.synth.dataset import make_dataset

    root.mkdir(parents=True, exist_ok=True)
    for stain in TEST_STAINS:
        if not (root / stain / "dataset.json").is_file():
            make_dataset(root / stain, stain=stain, workers=1, progress=False, **STAIN_DATA)


def run_queue(study: str, runs: list[Run], out: Path, jobs: int, recorded: list[Run]) -> None:
    """Train `runs` not done yet, `jobs` at a time; the results CSV lists every finished run of `recorded`
    (the whole study, so running one stage keeps the others' rows)."""
    todo = [r for r in runs if not is_done(r)]
    print(
        f"{study}: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to train, {jobs} at a time", flush=True
    )
    write_results(study, recorded, out)
    if not todo:
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, context, initializer=_threads) as pool:
        futures = {pool.submit(train_run, run): run for run in todo}
        failed = 0
        for future in as_completed(futures):
            try:
                print(f"{time.strftime('%H:%M:%S')} done {future.result()}", flush=True)
            except Exception as e:  # one failed run does not stop the queue; rerunning retries it
                failed += 1
                print(f"{time.strftime('%H:%M:%S')} FAILED {futures[future].out}: {e!r}", flush=True)
            write_results(study, recorded, out)
    if failed:
        raise SystemExit(f"{failed} runs failed; rerun the same command to retry them")


# -- results ----------------------------------------------------------------------------------------------
FIELDS = ["stage", "setting", "fraction", "seed", "test_set", "macro_f1", "micro_f1", "cls_accuracy"]
FIELDS += ["f1_0", "f1_1", "f1_2", "f1_3", "best_val_macro_f1", "epochs", "seg_tiles", "cls_tiles", "train_seconds"]


def _log_seconds(folder: Path) -> float:
    with open(folder / "log.csv", newline="") as f:
        return sum(float(r["seconds"]) for r in csv.DictReader(f))


def result_rows(run: Run) -> list[dict]:
    metrics = json.loads((run.out / "metrics.json").read_text())
    seconds = _log_seconds(run.out)
    if run.source:  # a continued run's log starts with its source's epochs: count only its own
        seconds -= _log_seconds(Path(run.source))
    common = {
        "stage": run.stage.name,
        "setting": run.setting,
        "fraction": run.fraction,
        "seed": run.seed,
        "best_val_macro_f1": metrics["best_val_score"],
        "epochs": metrics["config"]["epochs"],
        "seg_tiles": metrics["train_tiles"]["seg"],
        "cls_tiles": metrics["train_tiles"]["cls"],
        "train_seconds": round(seconds, 1),
    }
    scores = {"test": metrics}
    for name in run.eval_datasets:
        scores[name] = json.loads((run.out / f"eval_{name}.json").read_text())
    rows = []
    for name, m in scores.items():
        per_class = list(m["per_class_f1"].values())
        row = {**common, "test_set": name, "macro_f1": m["macro_f1"], "micro_f1": m["micro_f1"]}
        row["cls_accuracy"] = m.get("cls_accuracy")
        row.update({f"f1_{i}": (per_class[i] if i < len(per_class) else None) for i in range(4)})
        rows.append(row)
    return rows


def write_results(study: str, runs: list[Run], out: Path) -> None:
    rows = [row for run in runs if is_done(run, strict=False) for row in result_rows(run)]
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".results_{study}.csv.partial"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / f"results_{study}.csv")


def read_results(out: Path, study: str) -> list[dict]:
    with open(out / f"results_{study}.csv", newline="") as f:
        return list(csv.DictReader(f))


def cell(rows: list[dict], stage: str, setting: str, fraction: float, test_set: str = "test") -> dict[int, float]:
    """seed -> test macro F1 of one cell."""
    return {
        int(r["seed"]): float(r["macro_f1"])
        for r in rows
        if r["stage"] == stage
        and r["setting"] == setting
        and float(r["fraction"]) == fraction
        and r["test_set"] == test_set
    }


def fmt(values: dict[int, float]) -> str:
    if not values:
        return "-"
    v = np.array(list(values.values()))
    return f"{100 * v.mean():.1f} +- {100 * v.std(ddof=1) if len(v) > 1 else 0:.1f} (n={len(v)})"


def compare(a: dict[int, float], b: dict[int, float]) -> str:
    """b - a paired by seed, in points: mean +- std of the per-seed differences, and whether the mean
    difference exceeds the seed spread (larger than the std of either cell)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "-"
    d = np.array([b[s] - a[s] for s in seeds]) * 100
    spread = max(
        np.std(list(a.values()), ddof=1) if len(a) > 1 else 0, np.std(list(b.values()), ddof=1) if len(b) > 1 else 0
    )
    exceeds = "yes" if abs(d.mean()) > 100 * spread else "no"
    sd = d.std(ddof=1) if len(d) > 1 else 0
    signs = "".join("+" if x > 0 else "-" for x in d)
    return f"{d.mean():+.1f} +- {sd:.1f} ({signs}) | {exceeds}"


def relative(a: dict[int, float], b: dict[int, float]) -> str:
    if not a or not b:
        return "-"
    return f"{100 * (np.mean(list(b.values())) / np.mean(list(a.values())) - 1):+.0f} %"


def report_glas(rows: list[dict], factor_s: float) -> str:
    lines = ["## Map of the gain (the paper's recipe)", ""]
    lines += [
        "| s | S | S+C | S+C - S (points, paired by seed) | exceeds spread | relative |",
        "|---|---|---|---|---|---|",
    ]
    for f in sorted({float(r["fraction"]) for r in rows if r["stage"] == "main"}):
        s, sc = cell(rows, "main", "S", f), cell(rows, "main", "S+C", f)
        lines.append(f"| {100 * f:g} % | {fmt(s)} | {fmt(sc)} | {compare(s, sc)} | {relative(s, sc)} |")
    lines += ["", "Per class (test F1, mean over seeds, %): stroma / benign gland / malignant gland", ""]
    lines += ["| s | S | S+C |", "|---|---|---|"]
    for f in sorted({float(r["fraction"]) for r in rows if r["stage"] == "main"}):
        cells = []
        for setting in ("S", "S+C"):
            picked = [r for r in rows if r["stage"] == "main" and r["setting"] == setting and float(r["fraction"]) == f]
            picked = [r for r in picked if r["test_set"] == "test"]
            means = [
                np.mean([float(r[f"f1_{i}"]) for r in picked if r[f"f1_{i}"] not in ("", None)] or [np.nan])
                for i in range(3)
            ]
            cells.append(" / ".join(f"{100 * m:.1f}" for m in means) if picked else "-")
        lines.append(f"| {100 * f:g} % | " + " | ".join(cells) + " |")
    lines += ["", f"## What widens or removes it (at s = {100 * factor_s:g} %)", ""]
    lines += ["| variant | S | S+C | S+C - S | exceeds spread | S+C vs the recipe's S+C | exceeds spread |"]
    lines += ["|---|---|---|---|---|---|---|"]
    base_s, base_sc = cell(rows, "main", "S", factor_s), cell(rows, "main", "S+C", factor_s)
    lines.append(f"| the paper's recipe | {fmt(base_s)} | {fmt(base_sc)} | {compare(base_s, base_sc)} | - | - |")
    for stage in dict.fromkeys(r["stage"] for r in rows if r["stage"] != "main"):
        s, sc = cell(rows, stage, "S", factor_s), cell(rows, stage, "S+C", factor_s)
        gain = compare(s, sc) if s else "- | -"
        lines.append(f"| {stage} | {fmt(s)} | {fmt(sc)} | {gain} | {compare(base_sc, sc)} |")
    full = cell(rows, "length", "S", 1.0)
    if full:
        lines += ["", f"S at s = 100 %: {fmt(cell(rows, 'main', 'S', 1.0))} (main), {fmt(full)} (length)", ""]
    return "\n".join(lines) + "\n"


def report_stain(rows: list[dict]) -> str:
    lines = [
        "| training | " + " | ".join(f"test: {t}" for t in TEST_STAINS) + " |",
        "|---|" + "---|" * len(TEST_STAINS),
    ]
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    for stage in stages:
        cells = [fmt(cell(rows, stage, "S", 1.0, t)) for t in TEST_STAINS]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += ["", "Paired by seed, against no HED jitter at the same length (points):", ""]
    lines += ["| training | " + " | ".join(f"test: {t} (diff / exceeds spread)" for t in TEST_STAINS) + " |"]
    lines += ["|---|" + "---|" * len(TEST_STAINS)]
    for stage in stages:
        base = "hed-0-long" if stage.endswith("-long") else "hed-0"
        if stage == base:
            continue
        cells = [compare(cell(rows, base, "S", 1.0, t), cell(rows, stage, "S", 1.0, t)) for t in TEST_STAINS]
        lines.append(f"| {stage} | " + " | ".join(c.replace(" | ", " / ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def cost(rows: list[dict]) -> str:
    per_stage: dict[str, float] = {}
    for r in rows:
        if r["test_set"] == "test":
            per_stage[r["stage"]] = per_stage.get(r["stage"], 0) + float(r["train_seconds"])
    total = sum(per_stage.values())
    parts = ", ".join(f"{k} {v / 3600:.1f} h" for k, v in per_stage.items())
    return f"Training time (sum over runs, wall clock of the training steps): {total / 3600:.1f} h ({parts})\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "report", "list"])
    parser.add_argument("study", choices=["glas", "stain"])
    parser.add_argument("--data", type=Path, help="glas: a segcls-prepare glas dataset; stain: a folder for 3 copies")
    parser.add_argument("--out", type=Path, help="Study folder (runs, results CSV).")
    parser.add_argument("--stage", action="append", help="Only these stages (repeatable) [default: all].")
    parser.add_argument("--factor-s", type=float, default=0.05, help="s of the factor studies [default: 0.05].")
    parser.add_argument("--hed", type=float, default=0.05, help="HED jitter of the glas factor study [default: 0.05].")
    parser.add_argument("--jobs", type=int, default=2, help="Runs side by side [default: 2].")
    args = parser.parse_args(argv)
    if args.command == "report":
        rows = read_results(args.out, args.study)
        text = report_glas(rows, args.factor_s) if args.study == "glas" else report_stain(rows)
        sys.stdout.write(text + "\n" + cost(rows))
        return
    runs = plan(args.study, args.data or Path("DATA"), args.out or Path("OUT"), args.stage, args.factor_s, args.hed)
    if args.command == "list":
        for run in runs:
            print(run.out, json.dumps({k: v for k, v in run.config.items() if k not in ("dataset", "out_dir")}))
        print(f"{len(runs)} runs")
        return
    if args.data is None or args.out is None:
        parser.error("run needs --data and --out")
    if args.study == "stain":
        make_stain_data(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    everything = plan(args.study, args.data, args.out, None, args.factor_s, args.hed)
    stages = {r.stage.name: asdict(r.stage) for r in everything}
    (args.out / f"study_{args.study}.json").write_text(json.dumps(stages, indent=1))
    run_queue(args.study, runs, args.out, args.jobs, everything)


if __name__ == "__main__":
    main()
