"""Mutation testing of the core with cosmic-ray: one session per module, each running only its own fast tests.

Why a wrapper: cosmic-ray reads one top-level `[cosmic-ray]` table and runs one test command per session, but
here each module has its own (fast) test files and some modules are sampled. So the per-module settings live
in pyproject.toml `[tool.cosmic-ray]`, and this script writes one cosmic-ray config per module, runs
`cosmic-ray init` + `exec`, and summarises. cosmic-ray mutates the file IN PLACE and restores it after each
mutant: do not edit the tree while it runs (or run it in a copy).

    python scripts/mutate.py [MODULE ...]        # default: every module in [tool.cosmic-ray.modules]
    python scripts/mutate.py --list              # the modules and their tests
    python scripts/mutate.py --report            # summarise existing sessions without running

Sessions (sqlite, resumable: rerunning continues where it stopped) and `summary.json` go to `session-dir`.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: cosmic-ray depends on the `toml` package, which reads it too
    import toml as tomllib

ROOT = Path(__file__).resolve().parent.parent


COSMIC_RAY = [sys.executable, "-m", "cosmic_ray.cli"]  # this interpreter's, whether or not a venv is active


def load_settings() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["cosmic-ray"]


def session_config(module: str, spec: dict, settings: dict) -> str:
    """The cosmic-ray config (TOML text) of one module's session."""
    tests = " ".join(shlex.quote(t) for t in spec["tests"])
    extra = spec.get("pytest-args", "")
    command = f"{shlex.quote(sys.executable)} -m pytest -x -q -p no:cacheprovider {extra} {tests}".replace("  ", " ")
    lines = [
        "[cosmic-ray]",
        f"module-path = {json.dumps(module)}",
        f"timeout = {float(spec.get('timeout', settings.get('timeout', 120)))}",
        "excluded-modules = []",
        f"test-command = {json.dumps(command)}",
        "[cosmic-ray.distributor]",
        'name = "local"',
    ]
    return "\n".join(lines) + "\n"


def annotation_spans(module: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) (line, column) of every annotation of a module that has `from __future__ import annotations`:
    those are never evaluated, so a mutant inside one is equivalent by construction."""
    tree = ast.parse((ROOT / module).read_text())
    lazy = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    if not lazy:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(node.returns)
        elif isinstance(node, (ast.arg, ast.AnnAssign)):
            found.append(node.annotation)
    return [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in found if a is not None]


def in_annotation(spans, pos) -> bool:
    return any(start <= tuple(pos) < end for start, end in spans)


def _position(item) -> tuple:
    """Where a mutant is and what it does: a total order of a module's mutants (job ids are random per `init`,
    and one operator can make two mutants at one place), so a seeded sample picks the same mutants every time."""
    m = item.mutations[0]
    return m.start_pos, m.operator_name, m.occurrence


def skip_items(db_path: Path, module: str, spec: dict, settings: dict) -> int:
    """Mark as skipped the excluded operators, mutants inside lazy annotations and, where `sample` < 1, all but a
    seeded sample of the rest."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    excluded = [*settings.get("exclude-operators", []), *spec.get("exclude-operators", [])]
    pattern = re.compile("|".join(f"(?:{e})" for e in excluded)) if excluded else None
    sample = float(spec.get("sample", 1.0))
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        pending = sorted(db.pending_work_items, key=_position)
        spans = annotation_spans(module)
        drop = [
            w
            for w in pending
            if (pattern and pattern.search(w.mutations[0].operator_name))
            or in_annotation(spans, w.mutations[0].start_pos)
        ]
        keep = [w for w in pending if w not in drop]
        if sample < 1.0:
            rng = random.Random(f"{module}:{settings.get('seed', 0)}")
            chosen = set(id(w) for w in rng.sample(keep, round(sample * len(keep))))
            drop += [w for w in keep if id(w) not in chosen]
        for w in drop:
            db.set_result(w.job_id, WorkResult(output="not sampled", worker_outcome=WorkerOutcome.SKIPPED))
    return len(drop)


def limit_pending(db_path: Path, module: str, limit: int, settings: dict) -> None:
    """Skip all but a seeded choice of `limit` pending mutants (a time-boxed run is a smaller sample)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(db_path), WorkDB.Mode.open) as db:
        pending = sorted(db.pending_work_items, key=_position)
        rng = random.Random(f"{module}:limit:{settings.get('seed', 0)}")
        for w in rng.sample(pending, max(0, len(pending) - limit)):
            db.set_result(w.job_id, WorkResult(output="not sampled (limit)", worker_outcome=WorkerOutcome.SKIPPED))


def forget_survivors(db_path: Path) -> int:
    """Drop the results of the surviving mutants, so that the next `exec` tests them again."""
    import sqlite3

    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome

    with use_db(str(db_path), WorkDB.Mode.open) as db:
        ids = [item.job_id for item, result in db.completed_work_items if result.test_outcome == TestOutcome.SURVIVED]
    with sqlite3.connect(db_path) as con:
        con.executemany("DELETE FROM work_results WHERE job_id = ?", [(i,) for i in ids])
    return len(ids)


def summarise(db_path: Path, module: str) -> dict:
    """Counts and survivors of a session; survivors inside lazy annotations count as `equivalent`, not survived."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    counts = {"killed": 0, "survived": 0, "equivalent": 0, "incompetent": 0, "skipped": 0, "pending": 0}
    survivors = []
    spans = annotation_spans(module)
    with use_db(str(db_path), WorkDB.Mode.open) as db:
        counts["pending"] = sum(1 for _ in db.pending_work_items)
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                counts["skipped"] += 1
            elif result.test_outcome == TestOutcome.SURVIVED and in_annotation(spans, item.mutations[0].start_pos):
                counts["equivalent"] += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                m = item.mutations[0]
                where = {"line": m.start_pos[0], "operator": m.operator_name, "occurrence": m.occurrence}
                survivors.append({**where, "diff": result.diff})
            elif result.test_outcome == TestOutcome.KILLED:
                counts["killed"] += 1
            else:
                counts["incompetent"] += 1
    tested = counts["killed"] + counts["survived"]
    counts["score"] = round(counts["killed"] / tested, 4) if tested else None
    return {**counts, "survivors": sorted(survivors, key=lambda s: s["line"])}


def run_module(module: str, spec: dict, settings: dict, out: Path, limit: int | None = None) -> dict:
    name = module.replace("/", "_").removesuffix(".py")
    cfg, db = out / f"{name}.toml", out / f"{name}.sqlite"
    cfg.write_text(session_config(module, spec, settings))
    start = time.perf_counter()
    # Unmutated, the tests must pass: otherwise every mutant would count as killed.
    command = shlex.split(tomllib.loads(cfg.read_text())["cosmic-ray"]["test-command"])
    if subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
        raise SystemExit(f"Error: the tests of {module} fail without any mutation: {' '.join(command)}")
    if not db.exists():
        subprocess.run([*COSMIC_RAY, "init", str(cfg), str(db)], check=True, cwd=ROOT)
        skip_items(db, module, spec, settings)
    if limit is not None:
        limit_pending(db, module, limit, settings)
    subprocess.run([*COSMIC_RAY, "exec", str(cfg), str(db)], check=True, cwd=ROOT)
    summary = summarise(db, module)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["tests"] = spec["tests"]
    summary["sample"] = float(spec.get("sample", 1.0))
    return summary


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    modules: dict = settings["modules"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all configured)")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests")
    parser.add_argument("--report", action="store_true", help="summarise existing sessions, run nothing")
    parser.add_argument("--retest", action="store_true", help="run the surviving mutants again (after new tests)")
    parser.add_argument("--limit", type=int, help="run at most this many more mutants per module (seeded choice)")
    args = parser.parse_args(argv)
    if args.list:
        for module, spec in modules.items():
            print(f"{module}: {' '.join(spec['tests'])} (sample {spec.get('sample', 1.0)})")
        return 0
    unknown = [m for m in args.modules if m not in modules]
    if unknown:
        print(f"Error: not configured in [tool.cosmic-ray.modules]: {', '.join(unknown)}", file=sys.stderr)
        return 2
    out = ROOT / settings.get("session-dir", "mutation")
    out.mkdir(exist_ok=True)
    summary_path = out / "summary.json"
    results = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for module in args.modules or list(modules):
        name = module.replace("/", "_").removesuffix(".py")
        if args.report:
            if (out / f"{name}.sqlite").exists():
                results[module] = {**results.get(module, {}), **summarise(out / f"{name}.sqlite", module)}
        else:
            if args.retest and (out / f"{name}.sqlite").exists():
                forget_survivors(out / f"{name}.sqlite")
            results[module] = run_module(module, modules[module], settings, out, args.limit)
        summary_path.write_text(json.dumps(results, indent=2))
    for module, r in results.items():
        score = "-" if r["score"] is None else f"{100 * r['score']:.1f} %"
        print(
            f"{module}: killed {r['killed']}, survived {r['survived']}, equivalent (annotations) "
            f"{r.get('equivalent', 0)}, incompetent {r['incompetent']}, "
            f"skipped {r['skipped']}, pending {r['pending']}: score {score} ({r.get('seconds', '?')} s)"
        )
        for s in r["survivors"]:
            print(f"  survived line {s['line']} {s['operator']} #{s['occurrence']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
