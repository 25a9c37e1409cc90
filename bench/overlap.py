"""How much context a tile needs: labels of tiled inference vs whole-image inference, per overlap and tile.

A region of a slide, read at the model's resolution, is run once whole (on white glass, like the tiles at
its edges see) and then through `infer_slide` (crop stitching) with each tile size and overlap. The
agreement is the fraction of stride-8 label-map pixels on which the two agree; the network work is the
input pixels the tiles feed the network per frame pixel. docs/overlap.md has the table and the choice.

    segcls-bench overlap SLIDE --model MODEL [--mpp 1.0] [--size 2048] [-o F]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from segcls.bench.bench_infer import environment, int_list, machine_line
from segcls.bench.report import check_results, command_line, results_options, write_results
from segcls.core.cli import command, input_path
from segcls.core.constants import INPUT_MULTIPLE, UNLABELLED

GLASS = 256  # white margin around the whole image: more than the network's receptive field reaches


def whole_image_labels(backend, image: np.ndarray) -> np.ndarray:
    """Stride-8 labels of `image` run whole, on white glass, cropped back to the image."""
    h, w = image.shape[:2]
    pad_h, pad_w = GLASS + (-h % INPUT_MULTIPLE), GLASS + (-w % INPUT_MULTIPLE)
    padded = np.pad(image, ((GLASS, pad_h), (GLASS, pad_w), (0, 0)), constant_values=255)
    labels = backend.infer(padded[None]).labels[0]
    g = GLASS // 8
    return labels[g : g + -(-h // 8), g : g + -(-w // 8)]


def overlap_agreement(
    model: str | Path,
    image: np.ndarray,
    mpp: float,
    overlaps: tuple[int, ...] = (0, 16, 32, 48, 64, 128),
    tiles: tuple[int, ...] = (512, 1024),
    tissue: str = "none",
    progress: bool = False,
) -> list[dict]:
    """One row per (tile, overlap): labels agreement with whole-image inference and the network work.

    `tissue="auto"`: tissue detection on, so tiles are trimmed to their tissue (`trim_tiles`) and each
    pixel keeps only its `overlap` of context; agreement is then over the pixels labelled tissue."""
    from PIL import Image

    from segcls.runtime.pipeline import InferOptions, infer_slide, open_model
    from segcls.runtime.slide import open_slide

    h, w = image.shape[:2]
    rows = []
    bar = tqdm(total=len(tiles) * len(overlaps), desc="tile x overlap", disable=not progress)
    with tempfile.TemporaryDirectory() as tmp, open_model(model) as backend, bar:
        whole = whole_image_labels(backend, image)
        png = Path(tmp) / "region.png"
        Image.fromarray(image).save(png)
        with open_slide(png, mpp=mpp) as slide:
            for tile in tiles:
                for overlap in overlaps:
                    opts = InferOptions(tile=tile, overlap=overlap, tissue=tissue, mpp=mpp, progress=False)
                    result = infer_slide(slide, backend, Path(tmp) / "mask.tif", opts)
                    bar.update()
                    run = result.summary["tiles"]["run"]
                    scored = result.labels != UNLABELLED  # everything without tissue detection
                    rows.append({
                        "tile": tile,
                        "overlap": overlap,
                        "tiles": run,
                        "agreement": float((result.labels == whole)[scored].mean()),
                        "scored": float(scored.mean()),
                        "work": result.summary["tiles"]["input_mpx"] * 1e6 / (w * h),  # input px per frame px
                        "core_work": (tile / (tile - 2 * overlap)) ** 2,  # the same, away from the edges
                    })  # fmt: skip
    return rows


def choose(rows: list[dict], tile: int, needed: float = 0.995) -> dict | None:
    """The least-work overlap at `tile` whose agreement is at least `needed`."""
    ok = [r for r in rows if r["tile"] == tile and r["agreement"] >= needed]
    return min(ok, key=lambda r: (r["core_work"], r["overlap"])) if ok else None


def markdown(result: dict, env: dict) -> str:
    lines = [
        machine_line(env),
        "",
        f"Region {result['region']} of `{Path(result['slide']).name}` read at {result['mpp']} um/px "
        f"({result['size'][0]} x {result['size'][1]} px); model `{Path(result['model']).name}`; "
        + (
            "tissue detection on, tiles trimmed to it, agreement over tissue pixels."
            if result.get("tissue") == "auto"
            else "no tissue detection, agreement over every pixel."
        ),
        "",
        "| tile | overlap | tiles | labels agreement vs whole image | network work per px (this region) "
        "| per px, large slide |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['tile']} | {r['overlap']} | {r['tiles']} | {100 * r['agreement']:.2f} % | {r['work']:.2f} "
            f"| {r['core_work']:.3f} |"
        )
    return "\n".join(lines) + "\n"


@command("overlap")
@click.argument("slide", type=input_path(dir_okay=False))
@click.option("--model", required=True, type=input_path(dir_okay=False), help="The model run tiled and whole.")
@click.option("--mpp", type=float, help="Read resolution, um/px [default: the model's training mpp].")
@click.option("--size", default=2048, help="Side of the region, read-frame px.")
@click.option("--at", default=None, help="X,Y: the region's top left, level-0 px [default: the slide's centre].")
@click.option("--overlaps", default="0,16,32,48,64,128", callback=int_list, help="Overlaps, px, comma-separated.")
@click.option("--tiles", default="512,1024", callback=int_list, help="Tile sides, px, comma-separated.")
@click.option(
    "--tissue",
    type=click.Choice(["none", "auto"]),
    default="none",
    help="auto: tissue detection, tiles trimmed to it; agreement over the tissue pixels.",
)
@results_options("overlap")
def overlap_command(slide, model, mpp, size, at, overlaps, tiles, tissue, output, overwrite, quiet) -> None:
    """Labels agreement of tiled vs whole-image inference per overlap and tile size, on a region of SLIDE."""
    from segcls.core.model_info import read_model_info
    from segcls.runtime.slide import open_slide
    from segcls.runtime.tiling import plan_read, read_tile

    check_results(output, overwrite)
    mpp = mpp or read_model_info(model).description.mpp
    with open_slide(slide) as s:
        plan = plan_read(s, mpp)
        w0, h0 = s.dimensions
        x0, y0 = (int(v) for v in at.split(",")) if at else (w0 // 2, h0 // 2)
        x, y = round(x0 / plan.scale) - size // 2 * (at is None), round(y0 / plan.scale) - size // 2 * (at is None)
        image = read_tile(s, plan, x, y, size)
    rows = overlap_agreement(model, image, mpp, overlaps, tiles, tissue, progress=not quiet)
    result = {
        "slide": str(slide),
        "model": str(model),
        "mpp": mpp,
        "region": [x, y, size, size],
        "size": [size, size],
        "tissue": tissue,
        "rows": rows,
        "choice": {t: choose(rows, t) for t in tiles},
    }
    env = environment()
    text = markdown(result, env)
    click.echo(text)
    write_results(output, {"environment": env, "command": command_line(), **result}, text)
