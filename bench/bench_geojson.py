"""How long `--geojson` takes to write a noisy label map: one MultiPolygon per class (the default) against
one Polygon per region, alternating, in one process (`segcls-bench geojson`).

A median-filtered random map of 4 classes with 2 % unlabelled pixels gives tens of thousands of regions,
what a weak model produces on a large slide; the issue that asked for the per-class default measured
84k features in 25 s with the per-region writer of that time.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from segcls.bench.bench_infer import cpu_line, machine, versions
from segcls.bench.report import check_results, results_options, write_results
from segcls.core.cli import command
from segcls.core.constants import UNLABELLED
from segcls.runtime.geojson import write_geojson

CLASSES = ("a", "b", "c", "d")
COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def noisy_labels(size: int, seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    labels = ndimage.median_filter(rng.integers(0, len(CLASSES), (size, size)), 3).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.02] = UNLABELLED
    return labels


def bench_geojson(size: int = 1100, rounds: int = 3, downsample: float = 2.5, seed: int = 0) -> dict:
    """Seconds per write (median, min, max over `rounds`, the variants alternating) and features/bytes."""
    labels = noisy_labels(size, seed)
    variants = {"per class": {}, "per region": {"per_region": True}}
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    written: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.geojson"
        for _ in range(rounds):
            for name, options in variants.items():
                start = time.perf_counter()
                features = write_geojson(path, labels, CLASSES, COLORS, downsample, **options)
                seconds[name].append(time.perf_counter() - start)
                written[name] = {"features": features, "bytes": path.stat().st_size}
    return {
        "map": {"size": size, "downsample": downsample, "seed": seed},
        "rounds": rounds,
        "results": {k: {**written[k], **_spread(v)} for k, v in seconds.items()},
        "machine": machine(),
        "versions": versions(),
        "threads": os.cpu_count(),
    }


def _spread(values: list[float]) -> dict:
    median, low, high = statistics.median(values), min(values), max(values)
    return {"median_s": round(median, 3), "min_s": round(low, 3), "max_s": round(high, 3)}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Noisy {result['map']['size']}^2 label map, downsample {result['map']['downsample']}, "
        f"{result['rounds']} alternating rounds. Machine: {cpu_line(m)}, {m['cores']} cores, load average at the "
        f"end {m['loadavg'][0]:.1f}. Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
        "| output | features | MB | median s | min-max s |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["results"].items():
        lines.append(
            f"| {name} | {r['features']} | {r['bytes'] / 1e6:.1f} | {r['median_s']:.2f} | "
            f"{r['min_s']:.2f}-{r['max_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


@command("geojson")
@click.option("--size", default=1100, type=click.IntRange(16), help="Side of the noisy label map, px.")
@click.option("--rounds", default=3, type=click.IntRange(1), help="Rounds, the two variants alternating in each.")
@results_options("geojson")
def geojson_command(size: int, rounds: int, output: Path, overwrite: bool, quiet: bool) -> None:
    """Write time of --geojson on a noisy map: one MultiPolygon per class vs one Polygon per region."""
    check_results(output, overwrite)
    result = bench_geojson(size=size, rounds=rounds)
    text = markdown(result)
    write_results(output, result, text)
    click.echo(text + f"-> {output}")
