"""segcls-view: look at segcls results over the tissue in a browser (a thin layer over segcls.runtime.view)."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click

from segcls.core.cli import handle_errors, require_extra
from segcls.core.errors import SegclsError
from segcls.runtime.view.server import DEFAULT_PORT, LOCAL_HOSTS


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--mask", type=click.Path(path_type=Path), help="The slide's mask (NAME.mask.tif of segcls-infer).")
@click.option(
    "--geojson", type=click.Path(path_type=Path), help="Region outlines to draw on demand (segcls-infer --geojson)."
)
@click.option(
    "--summary",
    type=click.Path(path_type=Path),
    help="NAME.summary.json for the areas and slide class [default: the one beside the mask, if any].",
)
@click.option("--slide-mpp", type=float, help="The slide's level-0 um/px, for slides that lack it or lie.")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on; others than this machine's warn."
)
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535), help="TCP port; 0: any free one."
)
@click.option("--open", "open_browser", is_flag=True, help="Open the viewer in the default web browser.")
@click.option("--threads", type=click.IntRange(1, 256), help="Request threads [default: 2 per core, at least 4].")
@click.option("--cache-mb", default=256, show_default=True, type=click.IntRange(0), help="Tile cache size, MB.")
@click.option(
    "--opacity", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Initial mask opacity, 0-1."
)
@click.option(
    "-o",
    "--output",
    "--export",
    "export_dir",
    type=click.Path(path_type=Path),
    help="Write a static viewer to this folder (page + all Deep Zoom tiles, opens from disk) instead of serving.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --export folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.version_option(package_name="segcls", prog_name="segcls-view")
@handle_errors
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
    export_dir: Path | None,
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

    if not target.exists():
        raise SegclsError(f"not found: {target}")
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
