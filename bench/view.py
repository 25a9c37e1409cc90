"""How fast `segcls-view` serves tiles: latency percentiles and tiles/s under a few concurrent clients.

    segcls-bench view -o bench/results/cpu-2core-view.json   # the Aperio test slide + a 16k px synthetic slide
    segcls-bench view --synthetic-size 4096 --requests 40 --clients 1,2 -o /tmp/view.json   # a quick check

For each slide, layer (slide JPEG tiles, mask PNG tiles) and client count, a fresh `segcls-view` process (the
real command, its own process and port) is asked for the same list of 254 px tiles of the top Deep Zoom level
(full resolution) twice: `cold` (every tile rendered: read, resized where needed, encoded) and `warm` (every
tile from the tile cache, as when a user pans back). Clients are threads with keep-alive connections taking
the next tile from a shared list, as a browser's 6 connections do; each request's latency is timed on the
client. The clients run on the same cores as the server (2 here): what a user's browser on the same machine
sees. Target: warm p50 < 50 ms for a slide tile on 2 cores.

The synthetic slide (`segcls-synth slide` with its ground-truth mask) is written once into --work and reused.
The Aperio slide's mask is a 3-class labelling of its stain intensity at stride 8 (written by the runtime's
mask writer): its content only changes PNG sizes.
"""

from __future__ import annotations

import http.client
import json
import math
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import click
import numpy as np

from segcls.bench.bench_infer import cpu_line, environment, int_list
from segcls.bench.report import check_results, command_line, results_options, write_results
from segcls.core.cli import command
from segcls.core.errors import SegclsError

CMU = Path(__file__).resolve().parents[1] / "tests" / "data" / "cmu-1-small-region.svs"
LAYERS = ("slide", "mask")
TILE = 254


def cmu_with_mask(work: Path) -> tuple[Path, Path]:
    """The Aperio test slide and a 3-class mask of it (dark / mid / light stain at stride 8; glass unlabelled)."""
    from segcls.runtime.mask_writer import write_mask
    from segcls.runtime.slide import open_slide

    mask = work / "cmu-1-small-region.mask.tif"
    if not mask.is_file():
        with open_slide(CMU) as slide:
            w0, h0 = slide.dimensions
            thumb = slide.get_thumbnail((math.ceil(w0 / 8), math.ceil(h0 / 8))).astype(np.float32).mean(-1)
            labels = np.digitize(thumb, [150, 190, 220]).astype(np.uint8)  # 0 darkest .. 3 glass
            labels[labels == 3] = 255
            write_mask(mask, labels, (w0, h0), [(220, 30, 30), (40, 160, 60), (30, 60, 220)], slide.mpp, tile=512,
                       classes=["dark", "mid", "light"])  # fmt: skip
    return CMU, mask


def synthetic_with_mask(work: Path, size: int, progress: bool = True) -> tuple[Path, Path]:
    from segcls.synth.slide import make_slide

    slide, mask = work / f"synthetic-{size}.tif", work / f"synthetic-{size}.mask.tif"
    if not (slide.is_file() and mask.is_file()):
        make_slide(slide, size, size, mpp=0.5, seed=1, mask_path=mask, progress=progress)
    return slide, mask


class Server:
    """`segcls-view SLIDE --mask MASK --port 0` in its own process, for the duration of a `with` block."""

    def __init__(self, slide: Path, mask: Path, threads: int | None) -> None:
        self.command = [sys.executable, "-c", "from segcls.runtime.view.cli import main; main()", str(slide),
                        "--mask", str(mask), "--port", "0", "-q"]  # fmt: skip
        if threads:
            self.command += ["--threads", str(threads)]

    def __enter__(self) -> Server:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("Serving"):
            self.process.kill()
            raise SegclsError(f"segcls-view did not start: {line.strip() or self.process.stderr.read().strip()}")
        url = urlsplit(line.split(" on ")[1].split()[0])
        self.host, self.port = url.hostname, url.port
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        self.key = response.getheader("Location").rsplit("/", 1)[1]
        connection.request("GET", f"/view/{self.key}")
        page = connection.getresponse().read().decode()
        connection.close()
        config = json.loads(re.search(r'type="application/json">(.*?)</script>', page, re.S).group(1))
        self.size = (config["width"], config["height"])
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(30)


def top_level_tiles(size: tuple[int, int], count: int) -> tuple[int, list[tuple[int, int]]]:
    """(the top Deep Zoom level, `count` interior tiles of it around the slide's centre, row by row)."""
    w, h = size
    level = math.ceil(math.log2(max(w, h)))
    cols, rows = math.ceil(w / TILE), math.ceil(h / TILE)
    side = max(1, math.ceil(math.sqrt(count)))
    c0, r0 = max(0, cols // 2 - side // 2), max(0, rows // 2 - side // 2)
    tiles = [(c, r) for r in range(r0, min(rows, r0 + side)) for c in range(c0, min(cols, c0 + side))]
    return level, tiles[:count]


def fetch_all(host: str, port: int, paths: list[str], clients: int) -> dict:
    """Request every path once, `clients` keep-alive connections side by side: latencies and throughput."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for path in paths:
        todo.put(path)
    latencies: list[float] = []
    sizes: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            try:
                path = todo.get_nowait()
            except queue.Empty:
                break
            start = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                sizes.append(len(body))
                if response.status != 200:
                    errors.append(f"{path}: {response.status}")
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SegclsError(f"{len(errors)} tile requests failed, e.g. {errors[0]}")
    ms = np.array(latencies) * 1000
    return {
        "tiles": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "tiles_per_s": round(len(ms) / wall, 1),
        "mean_kb": round(statistics.fmean(sizes) / 1024, 1),
    }


def bench_view(slides: dict[str, tuple[Path, Path]], clients: tuple[int, ...], requests: int, threads: int | None,
               log=print) -> list[dict]:  # fmt: skip
    rows = []
    for name, (slide, mask) in slides.items():
        for layer in LAYERS:
            for n in clients:
                with Server(slide, mask, threads) as server:
                    level, tiles = top_level_tiles(server.size, requests)
                    suffix = "jpeg" if layer == "slide" else "png"
                    paths = [f"/tiles/{server.key}/{layer}/{level}/{c}_{r}.{suffix}" for c, r in tiles]
                    for phase in ("cold", "warm"):
                        result = {"slide": name, "size": list(server.size), "layer": layer, "phase": phase,
                                  "clients": n, **fetch_all(server.host, server.port, paths, n)}  # fmt: skip
                        rows.append(result)
                        log(f"{name} {layer:5} {phase} x{n}: p50 {result['p50_ms']:.1f} ms, p99 "
                            f"{result['p99_ms']:.1f} ms, {result['tiles_per_s']:.0f} tiles/s")  # fmt: skip
    return rows


def markdown(data: dict) -> str:
    env = data["environment"]
    m = env["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [
        "# segcls-view tile serving",
        "",
        f"Machine: {cpu_line(m)}, {env['cores_available']} cores available, load average "
        f"{m['loadavg'][0]:.1f} at the end, {env['date']}. Versions: {versions}.",
        f"Server: segcls-view in its own process, {data['threads'] or 'default'} request threads, "
        f"{TILE} px tiles (+1 px overlap) of the top Deep Zoom level, {data['requests']} distinct tiles per run; "
        "clients are keep-alive connections in the benchmark's process, on the same cores.",
        "",
        "| slide | size (px) | layer | cache | clients | p50 ms | p90 ms | p99 ms | tiles/s | KB/tile |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['slide']} | {r['size'][0]} x {r['size'][1]} | {r['layer']} | {r['phase']} | {r['clients']} | "
            f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['tiles_per_s']:.0f} | {r['mean_kb']:.1f} |"
        )
    warm = [r for r in data["results"] if r["phase"] == "warm" and r["layer"] == "slide"]
    if warm:
        worst = max(r["p50_ms"] for r in warm)
        verdict = "met" if worst < 50 else "NOT met"
        lines += ["", f"Target (warm slide tile p50 < 50 ms on 2 cores): {verdict}, worst warm p50 {worst:.1f} ms."]
    return "\n".join(lines)


@command("view")
@click.option("--synthetic-size", default=16384, type=click.IntRange(1024),
              help="Side of the synthetic slide, px (written once into --work).")  # fmt: skip
@click.option("--no-cmu", is_flag=True, help="Leave out the Aperio test slide.")
@click.option("--clients", default="1,4", callback=int_list, help="Concurrent clients, comma-separated.")
@click.option("--requests", default=200, type=click.IntRange(1), help="Distinct tiles per run.")
@click.option("--threads", type=click.IntRange(1), help="Server request threads [default: segcls-view's].")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-view-work"),
              help="Folder for the synthetic slide and the masks, kept and reused.")  # fmt: skip
@results_options("view")
def view_command(
    synthetic_size: int, no_cmu: bool, clients: tuple[int, ...], requests: int, threads: int | None, work: Path,
    output: Path, overwrite: bool, quiet: bool,
) -> None:  # fmt: skip
    """segcls-view's tile latency (p50/p90/p99) and tiles/s, cold and warm cache, 1..N concurrent clients."""
    if not clients or min(clients) < 1:
        raise click.BadParameter("clients must be >= 1", param_hint="--clients")
    check_results(output, overwrite)
    work.mkdir(parents=True, exist_ok=True)
    slides = {} if no_cmu else {"cmu-1-small-region.svs": cmu_with_mask(work)}
    slides[f"synthetic-{synthetic_size}"] = synthetic_with_mask(work, synthetic_size, progress=not quiet)
    say = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))
    rows = bench_view(slides, clients, requests, threads, log=say)
    data = {"command": command_line(), "environment": environment(), "threads": threads, "requests": requests,
            "results": rows}  # fmt: skip
    text = markdown(data)
    write_results(output, data, text)
    click.echo(text)
    click.echo(f"wrote {output} and {output.with_suffix('.md')}")
