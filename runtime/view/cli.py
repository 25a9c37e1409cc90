"""segcls-view: look at segcls results over the tissue in a browser (a thin layer over segcls.runtime.view)."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click

from segcls.core.cli import command, input_path, overwrite_option, quiet_option, require_extra
from segcls.runtime.view.server import DEFAULT_PORT, LOCAL_HOSTS


@command("segcls-view")
@click.argument("target", type=input_path())
@click.option("--mask", type=input_path(dir_okay=False), help="The slide's mask (NAME.mask.tif of segcls-infer).")
@click.option(
    "--geojson", type=input_path(dir_okay=False), help="Region outlines to draw on demand (segcls-infer --geojson)."
)
@click.option(
    "--summary",
    type=input_path(dir_okay=False),
    help="NAME.summary.json for the areas and slide class [default: the one beside the mask, if any].",
)
@click.option(
    "--slide-mpp", type=float, help="The slide's level-0 um/px, for slides that lack it or lie [default: the file's]."
)
@click.option("--host", default="127.0.0.1", help="Address to listen on; any other than this machine's warns.")
@click.option("--port", default=DEFAULT_PORT, type=click.IntRange(0, 65535), help="TCP port; 0: any free one.")
@click.option("--open", "open_browser", is_flag=True, help="Open the viewer in the default web browser.")
@click.option("--threads", type=click.IntRange(1, 256), help="Request threads [default: 2 per core, at least 4].")
@click.option("--cache-mb", default=256, type=click.IntRange(0), help="Tile cache size, MB.")
@click.option("--opacity", default=0.5, type=click.FloatRange(0, 1), help="Initial mask opacity, 0-1.")
@click.option(
    "-o",
    "--output",
    "--export",
    "output",
    type=click.Path(path_type=Path),
    help="Write a static viewer to this folder (page + all Deep Zoom tiles, opens from disk) instead of serving "
    "[default: serve].",
)
@overwrite_option("an --export folder")
@quiet_option
def main(
    target: Path,
    mask: Path | None,
    geojson: Path | None,
    summary: Path | None,
    slide_mpp: float | None,
    host: str,
    port: int,
    open_browser: bool,
    threads: int | None,
    cache_mb: int,
    opacity: float,
    output: Path | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Show TARGET in a browser: a slide (with --mask) or OUT_DIR of `segcls-infer SLIDES... -o OUT_DIR`.

    A slide opens in a deep-zoom viewer with its mask on top in the class colours: opacity slider, class
    toggles, a legend with areas, the class and position under the pointer, the GeoJSON outlines. A cohort
    folder opens on an index of its slides (thumbnail with the mask, status, slide class, areas, speed).
    Served on 127.0.0.1 until Ctrl-C; only the files named here or in the cohort are served.
    """
    from segcls.runtime.view import export_view, open_viewer, serve

    export_dir = output
    if target.is_file() and mask is None and summary is not None:
        raise click.UsageError("--summary goes with --mask")
    if export_dir is not None:
        from segcls.runtime.view.export import check_target

        if target.is_dir():
            raise click.UsageError("--export writes one slide's viewer: give a SLIDE and its --mask")
        check_target(export_dir, overwrite)
    elif overwrite:
        raise click.UsageError("--overwrite goes with --export")
    else:
        require_extra("view", "waitress")  # before opening every slide, not after
    app = open_viewer(
        target, mask, geojson, summary, slide_mpp=slide_mpp, cache_bytes=cache_mb << 20, opacity=opacity,
        progress=not quiet,
    )  # fmt: skip
    if export_dir is not None:
        try:
            result = export_view(app.order[0], export_dir, overwrite=overwrite, opacity=opacity, progress=not quiet)
        finally:
            app.close()
        click.echo(f"{result.tiles} tiles, {result.bytes / 1e6:.1f} MB -> {result.folder / 'index.html'}")
        return
    if host not in LOCAL_HOSTS:
        click.echo(
            f"Warning: listening on {host}: anyone who can reach this machine on port {port} can see these slides "
            "(no login, no encryption).",
            err=True,
        )

    def ready(url: str) -> None:
        click.echo(f"Serving {len(app.order)} slide{'s' if len(app.order) > 1 else ''} on {url} (Ctrl-C to stop)")
        if open_browser:
            webbrowser.open(url)

    serve(app, host, port, threads, on_ready=ready)
