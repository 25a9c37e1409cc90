"""`segcls-bench`: each subcommand is a thin layer over a function in its own module of segcls.bench."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from segcls.atomic import atomic_path
from segcls.cli._common import handle_errors

RESULTS = Path(__file__).parent / "results"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Measure segcls: backend latency (`latency`) and whole-slide runs against the loops users write (`slide`)."""


@click.command("mask-write")
@click.option("--sizes", default="20000,40000,60000", show_default=True, help="slide sizes (px), comma-separated")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1), help="rounds, writers alternated")
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="model file reading at 4 um/px [default: a random network exported to ONNX]")  # fmt: skip
@click.option("--backend", default="auto", show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=RESULTS / "cpu-2core-mask-write.json",
    show_default=True,
    help="results (markdown beside it)",
)
@handle_errors
def mask_write(sizes: str, rounds: int, model: Path | None, backend: str, json_path: Path) -> None:
    """Mask writing's share of a whole-slide run: streamed writer vs serial, e2e, peak RSS per process."""
    from segcls.bench.mask_write import bench_mask_write, markdown

    try:
        values = [int(v) for v in sizes.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"not a list of integers: {sizes!r}", param_hint="--sizes") from None
    if not values or min(values) < 1024:
        raise click.BadParameter("sizes must be >= 1024 px", param_hint="--sizes")
    result = bench_mask_write(values, rounds, model, backend, progress=lambda line: click.echo(line, err=True))
    command = "segcls-bench mask-write " + " ".join(sys.argv[2:])
    result["command"] = command
    text = markdown(result, command)
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    with atomic_path(json_path.with_suffix(".md")) as tmp:
        tmp.write_text(text)
    click.echo(text)
    click.echo(f"wrote {json_path} and {json_path.with_suffix('.md')}")


main.add_command(mask_write)


from segcls.bench.overlap import overlap_command  # noqa: E402
from segcls.bench.readers import readers_command  # noqa: E402 - commands register after the group exists
from segcls.bench.slide import slide_command  # noqa: E402

main.add_command(slide_command)
main.add_command(readers_command)
main.add_command(overlap_command)
