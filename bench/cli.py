"""`segcls-bench`: each subcommand is a thin layer over a function in its own module of segcls.bench."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Measure segcls: backend latency (`latency`) and whole-slide runs against the loops users write (`slide`)."""


@main.command()
@click.option("--size", default=1100, show_default=True, help="Side of the noisy label map, px.")
@click.option("--rounds", default=3, show_default=True, help="Alternating rounds per variant.")
@click.option("--name", default="cpu-geojson", show_default=True, help="Results file name in bench/results/.")
def geojson(size: int, rounds: int, name: str) -> None:
    """Write time of --geojson on a noisy map: one MultiPolygon per class vs one Polygon per region."""
    from segcls.bench.bench_geojson import bench_geojson, markdown, save

    result = bench_geojson(size=size, rounds=rounds)
    path = save(result, name)
    click.echo(markdown(result) + f"-> {path}")
