"""`segcls-bench`: each subcommand is a thin layer over a function in its own module of segcls.bench."""

from __future__ import annotations

from segcls.bench.bench_geojson import geojson_command
from segcls.bench.cluster import cluster_command
from segcls.bench.latency import latency
from segcls.bench.mask_write import mask_write_command
from segcls.bench.overlap import overlap_command
from segcls.bench.readers import readers_command
from segcls.bench.shapes import shapes_command
from segcls.bench.slide import slide_command
from segcls.bench.view import view_command
from segcls.core.cli import group


@group("segcls-bench")
def main() -> None:
    """Measure segcls: backend latency, whole-slide runs against the loops users write, and the parts between.

    Every benchmark writes its results as -o/--output JSON with a markdown table beside it (.md), by default
    bench-NAME.json in the working directory.
    """


for command in (latency, slide_command, readers_command, overlap_command, mask_write_command, cluster_command,
                geojson_command, shapes_command, view_command):  # fmt: skip
    main.add_command(command)
