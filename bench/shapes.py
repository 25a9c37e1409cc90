"""`segcls-bench shapes`: what a trimmed tile costs. Milliseconds per Mpx of network input by input shape.

Trimming (`runtime.plan.trim_tiles`) pays off on a backend only if a smaller input runs in time
proportional to its area; this measures it. Shapes alternate within each round, so a ratio to the whole
tile is taken under the same load; the median over rounds is reported, with the range.

    segcls-bench shapes model.onnx [--shapes 1024x1024,1024x256,256x256] [--rounds 3] [-o F]
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from segcls.bench.bench_infer import environment, machine_line
from segcls.bench.report import check_results, command_line, results_options, write_results
from segcls.core.cli import command, input_path
from segcls.core.constants import check_multiple
from segcls.core.errors import SegclsError

DEFAULT_SHAPES = "1024x1024,1024x928,1024x512,1024x256,512x512,256x1024,256x256,384x640,128x128"


def _shape(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    try:
        shape = int(h), int(w)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not HxW (e.g. 1024x256)") from None
    try:
        return check_multiple("H", shape[0]), check_multiple("W", shape[1])
    except SegclsError as e:
        raise click.BadParameter(f"{text}: {e}") from None


def shape_costs(
    backend, shapes: list[tuple[int, int]], rounds: int = 3, mpx_per_call: float = 1.0, progress: bool = False
) -> list[dict]:
    """Per shape: ms per Mpx of input (median over rounds) and its ratio to the first shape's, per round."""
    rng = np.random.default_rng(0)
    inputs = {s: rng.integers(0, 256, (1, *s, 3), dtype=np.uint8) for s in shapes}
    for x in inputs.values():
        backend.infer(x)  # allocations, kernel selection
    per_mpx: dict[tuple[int, int], list[float]] = {s: [] for s in shapes}
    for _ in tqdm(range(rounds), desc="rounds", disable=not progress):
        for s, x in inputs.items():
            mpx = s[0] * s[1] / 1e6
            calls = max(1, round(mpx_per_call / mpx))
            start = time.perf_counter()
            for _ in range(calls):
                backend.infer(x)
            per_mpx[s].append(1000 * (time.perf_counter() - start) / calls / mpx)
    first = per_mpx[shapes[0]]
    rows = []
    for s in shapes:
        ratios = [a / b for a, b in zip(per_mpx[s], first, strict=True)]
        rows.append({
            "shape": list(s),
            "ms_per_mpx": round(float(np.median(per_mpx[s])), 1),
            "vs_first": {"median": round(float(np.median(ratios)), 3), "min": round(min(ratios), 3),
                         "max": round(max(ratios), 3)},
        })  # fmt: skip
    return rows


def markdown(result: dict, env: dict) -> str:
    first = "x".join(map(str, result["rows"][0]["shape"]))
    lines = [
        machine_line(env),
        "",
        f"Model `{Path(result['model']).name}` on {result['device']}, batch 1, {result['rounds']} rounds "
        "alternating the shapes; median (range).",
        "",
        f"| input H x W | ms per Mpx | per Mpx vs {first} |",
        "|---|---|---|",
    ]
    for r in result["rows"]:
        v = r["vs_first"]
        lines.append(f"| {r['shape'][0]} x {r['shape'][1]} | {r['ms_per_mpx']} | {v['median']:.2f} "
                     f"({v['min']:.2f}-{v['max']:.2f}) |")  # fmt: skip
    return "\n".join(lines) + "\n"


@command("shapes")
@click.argument("model", type=input_path(dir_okay=False))
@click.option("--shapes", default=DEFAULT_SHAPES, help="Comma-separated HxW inputs, px.")
@click.option("--rounds", default=3, type=click.IntRange(1), help="Rounds, the shapes alternating in each.")
@results_options("shapes")
def shapes_command(model, shapes, rounds, output, overwrite, quiet) -> None:
    """Milliseconds per Mpx of network input by input shape: does a trimmed tile cost its area?"""
    from segcls.runtime.pipeline import open_model

    check_results(output, overwrite)
    chosen = [_shape(s) for s in shapes.split(",")]
    with open_model(model) as backend:
        rows = shape_costs(backend, chosen, rounds, progress=not quiet)
        device = backend.device
    result = {"model": str(model), "device": device, "rounds": rounds, "rows": rows}
    env = environment()
    text = markdown(result, env)
    click.echo(text)
    write_results(output, {"environment": env, "command": command_line(), **result}, text)
