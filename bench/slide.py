"""`segcls-bench slide`: segcls-infer against the loops users write instead, on one slide, in one run.

Each method (segcls, the plain loop, the whole-frame sliding window; bench/baselines.py) runs in its own
fresh process, so peak RSS is each method's own; its time is measured inside it from loading the model to
the mask written (the process wall, also recorded, adds imports and, for segcls, the backend-only and
read-only passes). Rounds alternate the methods, and every ratio is taken within a round, then the median and
range over rounds are reported: on a shared machine the load moves between rounds, not within one pair.

    segcls-bench slide SLIDE --model MODEL [--model MODEL@BACKEND[:PRECISION] ...] [--mpp X] [--rounds 3] [-o F]

The first `--model` is "segcls" (its defaults: `--backend auto` picks the backend); every further one is
segcls again on that model, backend and precision (e.g. `model.int8.onnx@onnxruntime`,
`model.onnx@openvino:bf16`), alternating with the others in the same rounds, with its own speedup over the
plain loop and over the first, and its pipeline / backend-only ratio (`variants` in the JSON). Before the
rounds each segcls run is opened once, untimed, so that `--backend auto`'s measurement and OpenVINO's
compilation land in their caches, not in a timed round.

JSON keys: `e2e_over_backend` (pipeline Mpx/s of network input over the backend alone on a sample of the
same tiles in memory; trimmed tiles differ in size, so pixels, not tiles, are the unit),
`e2e_over_read` (over the readers alone), `speedup_vs_plain_loop`, `speedup_vs_sliding_window` (the
baseline's seconds over segcls'), each {median, min, max}, and per method the times, tiles run and peak
RSS; for segcls the pipeline's per-stage times (read+decode, tissue, inference, stitch, write).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from segcls.bench.bench_infer import environment, machine_line
from segcls.bench.latency import ModelRun
from segcls.bench.report import check_results, command_line, results_options, write_results
from segcls.core.cli import command, input_path
from segcls.core.errors import SegclsError
from segcls.runtime.summary import choice_text

METHODS = ("segcls", "plain", "window", "before")
DEFAULT_METHODS = METHODS[:3]
DEFAULT_BEFORE = {"trim": False}  # what "before" changes unless told: whole tiles
LABELS = {
    "segcls": "segcls-infer (defaults)",
    "before": "segcls-infer as before (--before options; default --no-trim)",
    "plain": "plain loop: read_region per 1024 px tile, ORT batch 1, numpy canvas, tifffile.imwrite",
    "window": "MONAI sliding_window_inference (roi 1024, overlap 1/16, gaussian), ORT predictor",
}


def run_method(
    method: str,
    slide: Path,
    model: Path | ModelRun,
    out: Path,
    mpp: float | None,
    options: dict,
    before: dict | None = None,
    open_only: bool = False,
) -> dict:
    """One method in a fresh Python process; its JSON line plus the wall time seen from outside. `model`
    may name a backend and precision for segcls (`ModelRun`); `open_only`: segcls only opens the model, as
    its run would (`--backend auto`'s probe and OpenVINO's compilation are then cached) and writes nothing."""
    run = model if isinstance(model, ModelRun) else ModelRun(Path(model))
    if method == "before":  # segcls with other settings (`before`), for a before/after in one run
        method, options = "segcls", {**options, **(before or DEFAULT_BEFORE)}
    if method == "segcls" and run.backend:
        options = {**options, "backend": run.backend}
    cmd = [sys.executable, "-m", "segcls.bench.baselines", method, str(slide), str(run.path), str(out)]
    if mpp is not None:
        cmd += ["--mpp", str(mpp)]
    if method == "segcls" and options:
        cmd += ["--options", json.dumps(options)]
    if method == "segcls" and run.precision:
        cmd += ["--precision", run.precision]
    if open_only:
        cmd += ["--open-only"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SegclsError(f"the {method} run failed (exit {done.returncode}): {last}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def _spread(values: list[float]) -> dict:
    return {"median": round(float(np.median(values)), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def bench_slide(
    slide: str | Path,
    model: str | Path,
    mpp: float | None = None,
    rounds: int = 3,
    methods: tuple[str, ...] = METHODS,
    options: dict | None = None,
    keep_masks: Path | None = None,
    baseline_model: str | Path | None = None,
    before: dict | None = None,
    variants: tuple[str, ...] = (),
    progress: bool = False,
) -> dict:
    """Alternate `methods` (and segcls on each of `variants`, `MODEL@BACKEND[:PRECISION]`) over `rounds`;
    per-round ratios, medians and ranges. See the module docstring.

    `model` may be `MODEL@BACKEND[:PRECISION]` too. `baseline_model` (default `model`) is what the baselines
    run: e.g. segcls on an INT8 model against the loops users write on the FP32 one.
    """
    slide, main = Path(slide), ModelRun.parse(model)
    extra = [ModelRun.parse(v) for v in variants]
    baseline = Path(baseline_model or main.path)
    before = before or DEFAULT_BEFORE
    if "window" in methods and importlib.util.find_spec("monai") is None:
        methods = tuple(m for m in methods if m != "window")  # the optional `bench` extra is not installed
    runs_of = {m: (main if m in ("segcls", "before") else ModelRun(baseline)) for m in methods}
    runs_of |= {str(v): v for v in extra}
    for run in (main, *extra):  # untimed: auto's measurement and OpenVINO's compilation go to their caches
        run_method("segcls", slide, run, Path(tempfile.gettempdir()) / "unused.tif", mpp, options or {}, open_only=True)
    runs: dict[str, list[dict]] = {m: [] for m in runs_of}
    bar = tqdm(total=rounds * len(runs_of), desc="runs", unit="run", disable=not progress)
    with tempfile.TemporaryDirectory() as tmp, bar:
        folder = Path(keep_masks or tmp)
        for r in range(rounds):
            order = list(runs_of) if r % 2 == 0 else list(runs_of)[::-1]  # no method always runs first or last
            for i, name in enumerate(order):
                method = name if name in METHODS else "segcls"
                out = folder / f"{method}-{i}.tif"
                runs[name].append(run_method(method, slide, runs_of[name], out, mpp, options or {}, before))
                bar.update()
    result = summarize(slide, main.path, {m: runs[m] for m in methods}, rounds, options or {})
    result["model_run"] = str(main)
    result["variants"] = {str(v): summarize_variant(runs[str(v)], runs) for v in extra}
    result.setdefault("runs", {}).update({str(v): runs[str(v)] for v in extra})
    if "before" in runs:
        result["before"] = before
    result["baseline_model"] = str(baseline)
    return result


def summarize_variant(variant: list[dict], runs: dict[str, list[dict]]) -> dict:
    """One `MODEL@BACKEND[:PRECISION]` segcls run against the plain loop and the first model's segcls."""
    first = variant[0]["summary"]
    out = {
        "backend": first["backend"],
        "precision": first.get("precision"),
        "device": first["device"],
        "seconds": _spread([v["seconds"] for v in variant]),
        "tiles": first["tiles"],
        "peak_rss_mb": _spread([v["peak_rss_mb"] for v in variant]),
        "e2e_over_backend": _spread([v["e2e_mpx_per_s"] / v["backend_only"]["mpx_per_s"] for v in variant]),
        "backend_only_tiles_per_s": _spread([v["backend_only"]["tiles_per_s"] for v in variant]),
        "segcls_over_this": _spread(
            [s["seconds"] / v["seconds"] for s, v in zip(runs["segcls"], variant, strict=True)]
        ),
        "stages_s": {k: _spread([v["summary"]["timings_s"][k] for v in variant]) for k in first["timings_s"]},
    }
    if "plain" in runs:
        out["speedup_vs_plain_loop"] = _spread(
            [p["seconds"] / v["seconds"] for p, v in zip(runs["plain"], variant, strict=True)]
        )
    return out


def summarize(slide: Path, model: Path, runs: dict[str, list[dict]], rounds: int, options: dict) -> dict:
    segcls = runs["segcls"]
    result = {
        "slide": str(slide),
        "model": str(model),
        "rounds": rounds,
        "options": options,
        "read_size": segcls[0]["size"],
        "e2e_over_backend": _spread([s["e2e_mpx_per_s"] / s["backend_only"]["mpx_per_s"] for s in segcls]),
        "e2e_over_read": _spread([s["e2e_tiles_per_s"] / s["read_only"]["tiles_per_s"] for s in segcls]),
    }
    baselines = (("plain", "speedup_vs_plain_loop"), ("window", "speedup_vs_sliding_window"))
    for method, key in (*baselines, ("before", "speedup_vs_before")):
        if method in runs:
            result[key] = _spread([b["seconds"] / s["seconds"] for b, s in zip(runs[method], segcls, strict=True)])
        else:
            result[key] = None  # not asked for, or MONAI not installed
    result["methods"] = {
        m: {
            "label": LABELS[m],
            "seconds": _spread([x["seconds"] for x in v]),
            "process_wall_s": _spread([x["wall_s"] for x in v]),
            "tiles": v[0]["tiles"],
            "peak_rss_mb": _spread([x["peak_rss_mb"] for x in v]),
            "mask_size": v[0]["size"],
        }
        for m, v in runs.items()
    }
    stages = {
        "read+decode (reader threads)": "read",
        "waiting for readers": "wait",
        "tissue": "tissue",
        "inference": "infer",
        "stitch": "stitch",
        "write": "write",
        "total": "total",
    }
    timings = [s["summary"]["timings_s"] for s in segcls]
    result["segcls_stages_s"] = {name: _spread([t.get(key, 0.0) for t in timings]) for name, key in stages.items()}
    result["segcls"] = {
        "readers": segcls[0]["summary"]["readers"],
        "backend": segcls[0]["summary"]["backend"],
        "precision": segcls[0]["summary"].get("precision"),
        "backend_choice": segcls[0]["summary"].get("backend_choice"),
        "device": segcls[0]["summary"]["device"],
        "e2e_tiles_per_s": _spread([s["e2e_tiles_per_s"] for s in segcls]),
        "backend_only_tiles_per_s": _spread([s["backend_only"]["tiles_per_s"] for s in segcls]),
        "read_only_tiles_per_s": _spread([s["read_only"]["tiles_per_s"] for s in segcls]),
        "tiles": segcls[0]["summary"]["tiles"],
    }
    result["runs"] = runs
    return result


def markdown(result: dict, env: dict) -> str:
    def fmt(s: dict | None, unit: str = "") -> str:
        if s is None:
            return "n/a"
        return f"{s['median']:.2f}{unit} ({s['min']:.2f}-{s['max']:.2f})"

    seg = result["segcls"]
    tiles = seg["tiles"]
    lines = [
        machine_line(env),
        "",
        f"Slide `{Path(result['slide']).name}` read as {result['read_size'][0]} x {result['read_size'][1]}; "
        f"model `{Path(result['model']).name}`"
        + (
            f" (baselines: `{Path(result['baseline_model']).name}`)"
            if result.get("baseline_model", result["model"]) != result["model"]
            else ""
        )
        + f"; {result['rounds']} rounds alternating the methods, each run in "
        f"its own process; median (range). segcls: {seg['backend']} {seg.get('precision') or ''} on "
        f"{seg['device']}{choice_text(seg.get('backend_choice'))}, {seg['readers']} "
        f"reader thread(s), {tiles['total'] - tiles['skipped']} of {tiles['total']} tiles run"
        + (
            f" as {tiles['run']} network inputs, {tiles['input_mpx']:.1f} Mpx (trimmed tiles)."
            if "input_mpx" in tiles
            else "."
        ),
        "",
        "| method | seconds (model load to mask written) | process wall s | tiles run | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for m in result["methods"].values():
        lines.append(
            f"| {m['label']} | {fmt(m['seconds'])} | {fmt(m['process_wall_s'])} | {m['tiles']} "
            f"| {fmt(m['peak_rss_mb'])} |"
        )
    lines += [
        "",
        "Speedups use the seconds column: each method's own time from loading the model to its mask written. "
        "The process wall adds interpreter start and imports (torch + MONAI for the sliding window) and, for "
        "segcls, the backend-only and read-only passes that follow the run.",
    ]
    lines += [
        "",
        "| ratio (same round) | median (range) |",
        "|---|---|",
        f"| speedup vs plain loop | {fmt(result['speedup_vs_plain_loop'], 'x')} |",
        f"| speedup vs sliding window | {fmt(result['speedup_vs_sliding_window'], 'x')} |",
        f"| speedup vs segcls before{f' ({o})' if (o := _options_text(result.get('before'))) else ''} | "
        f"{fmt(result['speedup_vs_before'], 'x')} |",
        f"| e2e / backend-only Mpx/s | {fmt(result['e2e_over_backend'])} |",
        f"| e2e / read-only tiles/s | {fmt(result['e2e_over_read'])} |",
        "",
        f"segcls tiles/s: e2e {fmt(seg['e2e_tiles_per_s'])}, backend-only {fmt(seg['backend_only_tiles_per_s'])}, "
        f"read-only {fmt(seg['read_only_tiles_per_s'])}",
        "",
        "| segcls stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {fmt(v)} |" for name, v in result["segcls_stages_s"].items()]
    if result.get("variants"):
        lines += [
            "",
            "segcls on other models, backends, precisions (same rounds; speedups from the same round's seconds):",
            "",
            "| segcls run | backend | precision | seconds | vs plain loop | first segcls / this | e2e / backend-only "
            "| backend-only tiles/s | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, v in result["variants"].items():
            lines.append(
                f"| {Path(name).name} | {v['backend']} | {v['precision']} | {fmt(v['seconds'])} "
                f"| {fmt(v.get('speedup_vs_plain_loop'), 'x')} | {fmt(v['segcls_over_this'], 'x')} "
                f"| {fmt(v['e2e_over_backend'])} | {fmt(v['backend_only_tiles_per_s'])} | {fmt(v['peak_rss_mb'])} |"
            )
    return "\n".join(lines) + "\n"


def _key_values(items: tuple[str, ...]) -> dict:
    """KEY=JSON pairs (e.g. overlap=64, trim=false) as a dict."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            raise click.BadParameter(f"{item!r} is not KEY=JSON (e.g. overlap=64 or trim=false)") from None
    return out


def _options_text(options: dict | None) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in (options or {}).items())


@command("slide")
@click.argument("slide", type=input_path(dir_okay=False))
@click.option(
    "--model",
    "models",
    required=True,
    multiple=True,
    metavar="MODEL[@BACKEND[:PRECISION]]",
    help="segcls' model; repeated: segcls again on each further one (e.g. m.int8.onnx@onnxruntime, "
    "m.onnx@openvino:bf16), in the same rounds.",
)
@click.option("--baseline-model", type=input_path(dir_okay=False),
              help="The model the baselines run [default: --model].")  # fmt: skip
@click.option("--mpp", type=float, help="Read resolution, um/px [default: the model's training mpp].")
@click.option("--rounds", default=3, type=click.IntRange(1), help="Rounds, the methods alternating in each.")
@click.option(
    "--methods",
    default=",".join(DEFAULT_METHODS),
    help="Comma-separated subset of segcls,plain,window,before (segcls is always run; before: segcls with "
    "the --before options, the before of a before/after).",
)
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=JSON",
    help="An InferOptions field for segcls; repeatable [default: segcls-infer's defaults].",
)
@click.option(
    "--before",
    "before",
    multiple=True,
    metavar="KEY=JSON",
    help="An InferOptions field for the 'before' method, over --option [default: trim=false].",
)
@results_options("slide")
def slide_command(
    slide, models, baseline_model, mpp, rounds, methods, options, before, output, overwrite, quiet
) -> None:
    """segcls-infer vs the plain loop and the whole-frame sliding window on SLIDE: wall, tiles, peak RSS."""
    check_results(output, overwrite)
    chosen = tuple(m for m in METHODS if m == "segcls" or m in methods.split(","))
    for run in map(ModelRun.parse, models):
        if not run.path.is_file():
            raise SegclsError(f"model not found: {run.path}")
    result = bench_slide(
        slide, models[0], mpp, rounds, chosen, _key_values(options), baseline_model=baseline_model,
        before=_key_values(before) or None, variants=tuple(models[1:]), progress=not quiet,
    )  # fmt: skip
    env = environment()
    text = markdown(result, env)
    click.echo(text)
    write_results(output, {"environment": env, "command": command_line(), **result}, text)
