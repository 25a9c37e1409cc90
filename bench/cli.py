"""`segcls-bench`: each subcommand is a thin layer over a function in its own module of segcls.bench."""

from __future__ import annotations

import click

from segcls.bench.latency import latency


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Measure segcls: backend latency (`latency`) and whole-slide runs against the loops users write (`slide`)."""


main.add_command(latency)
