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


@main.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", required=True, type=click.Path(exists=True, path_type=Path), help="Model for the cohort.")
@click.option("--dataset", required=True, type=click.Path(exists=True, path_type=Path), help="Training dataset.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Results: OUT.json + OUT.md.")
@click.option("--rounds", default=3, show_default=True, help="Rounds; the configurations alternate in each.")
@click.option("--slide-mpp", type=float, default=2.0, show_default=True, help="For slides without an mpp.")
@click.option("--train-args", default="--epochs 1 --steps-per-epoch 6 --batch-size 16 --tile 64 --device cpu")
def cluster(slides, model: Path, dataset: Path, out: Path, rounds: int, slide_mpp: float, train_args: str) -> None:
    """Ray cohort slides/s with 1 vs 2 workers, and torchrun training tiles/s with 1 vs 2 processes."""
    import shlex
    import sys

    from segcls.bench.cluster import ddp_processes, ray_workers, write_results

    opts = dict(tile=256, overlap=32, batch=2, slide_mpp=slide_mpp)
    results = {"ray": ray_workers(list(slides), model, rounds=rounds, **opts)}
    results["ddp"] = ddp_processes(dataset, rounds=rounds, args=tuple(shlex.split(train_args)))
    write_results(out, results, "segcls-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    click.echo(out.with_suffix(".md").read_text())


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
