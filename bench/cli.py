"""`segcls-bench`: each subcommand is a thin layer over a function in its own module of segcls.bench."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Measure segcls: backend latency (`latency`) and whole-slide runs against the loops users write (`slide`)."""


from segcls.bench.overlap import overlap_command  # noqa: E402
from segcls.bench.readers import readers_command  # noqa: E402 - commands register after the group exists
from segcls.bench.slide import slide_command  # noqa: E402

main.add_command(slide_command)
main.add_command(readers_command)
main.add_command(overlap_command)
