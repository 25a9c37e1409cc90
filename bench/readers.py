"""Read-only throughput: the pipeline's own readers feeding a backend that costs nothing.

`--workers auto` is chosen from these numbers (runtime/cores.py `reader_budget`): how many 1024 px
tiles per second N reader threads decode from a slide, on this machine's cores, with the same reading
code, batch buffers and tile order as `segcls-infer`.

    segcls-bench readers SLIDE [SLIDE...] [--workers 1,2,4] [--mpp 1.0] [-o F]
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from segcls.bench.bench_infer import environment, int_list, machine_line
from segcls.bench.report import check_results, command_line, results_options, write_results
from segcls.core.cli import command, input_path
from segcls.runtime.tiling import DEFAULT_OVERLAP


def read_throughput(slide, plan, tiles, grid, workers: int, batch: int = 4) -> dict:
    """Tiles/s of the pipeline's reader feed (`runtime.feed.TileFeed`) over `tiles` with `workers` readers,
    each batch released as soon as it is read (nothing runs on it)."""
    from segcls.runtime.feed import TileFeed

    start = time.perf_counter()
    with TileFeed(slide, plan, tiles, batch, grid.tile, workers) as feed:
        for _ in feed:
            feed.done()
    seconds = time.perf_counter() - start
    return {
        "workers": workers,
        "tiles": len(tiles),
        "seconds": round(seconds, 3),
        "tiles_per_s": round(len(tiles) / seconds, 2),
        "read_s_per_tile": round(feed.read_seconds / max(len(tiles), 1), 4),
    }


def _open(slide_path, decoder: str):
    from segcls.runtime.slide import OpenSlideSlide, open_slide

    if decoder == "openslide":
        return OpenSlideSlide(slide_path, direct=False)
    return open_slide(slide_path)


def reader_scaling(
    slide_path: str | Path,
    workers: list[int],
    mpp: float | None = None,
    tile: int = 1024,
    overlap: int = DEFAULT_OVERLAP,
    rounds: int = 3,
    max_tiles: int = 64,
    decoders: tuple[str, ...] = ("segcls",),
) -> dict:
    """Read-only tiles/s per (decoder, reader count), rounds alternating over them; median and range.

    decoder "segcls" is what `open_slide` picks (tifffile's direct decode where it gives OpenSlide's
    pixels); "openslide" forces OpenSlide's own decoder, the baseline.
    """
    from segcls.runtime.tiling import TileGrid, plan_read

    slides = {d: _open(slide_path, d) for d in decoders}
    try:
        first = next(iter(slides.values()))
        plan = plan_read(first, mpp or first.mpp, None)
        grid = TileGrid(plan.size, tile, overlap)
        tiles = list(grid)[:max_tiles]
        read_throughput(first, plan, tiles, grid, max(workers))  # warm the page cache
        runs: dict[tuple[str, int], list[float]] = {(d, w): [] for d in decoders for w in workers}
        for _ in range(rounds):
            for d, w in runs:
                runs[(d, w)].append(read_throughput(slides[d], plan, tiles, grid, w)["tiles_per_s"])
        used = {d: getattr(s, "decoder", type(s).__name__) for d, s in slides.items()}
    finally:
        for s in slides.values():
            s.close()
    rows = [
        {"decoder": used[d], "workers": w, "tiles_per_s": float(np.median(v)), "min": min(v), "max": max(v), "runs": v}
        for (d, w), v in runs.items()
    ]
    return {
        "slide": str(slide_path),
        "size": list(first.dimensions),
        "read_size": list(plan.size),
        "level": plan.level,
        "tile": tile,
        "overlap": overlap,
        "tiles": len(tiles),
        "rounds": rounds,
        "rows": rows,
    }


def markdown(results: list[dict], env: dict) -> str:
    lines = [machine_line(env), ""]
    for r in results:
        lines += [
            f"`{Path(r['slide']).name}` ({r['size'][0]} x {r['size'][1]}, read at level {r['level']} as "
            f"{r['read_size'][0]} x {r['read_size'][1]}; {r['tiles']} tiles of {r['tile']} px, overlap "
            f"{r['overlap']}, median of {r['rounds']} alternating rounds)",
            "",
            "| decoder | reader threads | tiles/s | range | vs first row |",
            "|---|---|---|---|---|",
        ]
        base = r["rows"][0]["tiles_per_s"]
        for row in r["rows"]:
            lines.append(
                f"| {row['decoder']} | {row['workers']} | {row['tiles_per_s']:.1f} | {row['min']:.1f}-{row['max']:.1f} "
                f"| {row['tiles_per_s'] / base:.2f}x |"
            )
        lines.append("")
    return "\n".join(lines)


@command("readers")
@click.argument("slides", nargs=-1, required=True, type=input_path(dir_okay=False))
@click.option("--workers", default="1,2,4", callback=int_list, help="Reader thread counts, comma-separated.")
@click.option("--mpp", type=float, help="Read resolution, um/px [default: the slide's level 0].")
@click.option("--tile", default=1024, help="Tile side at the read resolution, px: a multiple of 16.")
@click.option("--overlap", default=DEFAULT_OVERLAP, help="Context on each side of a tile, px: a multiple of 16.")
@click.option("--rounds", default=3, type=click.IntRange(1), help="Rounds, the configurations alternating in each.")
@click.option("--max-tiles", default=64, type=click.IntRange(1), help="Tiles read per measurement.")
@click.option(
    "--decoders",
    default="segcls",
    help="segcls (what open_slide picks) and/or openslide (OpenSlide's own decoder), comma-separated.",
)
@results_options("readers")
def readers_command(slides, workers, mpp, tile, overlap, rounds, max_tiles, decoders, output, overwrite, quiet) -> None:
    """Read-only tiles/s of the pipeline's readers vs the number of reader threads."""
    check_results(output, overwrite)
    chosen = tuple(decoders.split(","))
    slides = tqdm(slides, desc="slides", unit="slide", disable=quiet)
    results = [reader_scaling(s, list(workers), mpp, tile, overlap, rounds, max_tiles, chosen) for s in slides]
    env = environment()
    text = markdown(results, env)
    click.echo(text)
    write_results(output, {"environment": env, "command": command_line(), "results": results}, text)
