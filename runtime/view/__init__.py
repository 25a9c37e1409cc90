"""segcls-view: a slide in the browser with its mask on top, or a whole cohort's results (no torch).

    from segcls.runtime.view import open_viewer, serve, export_view, open_item

    app = open_viewer("slide.svs", mask="out/slide.mask.tif")   # a WSGI app (or open_viewer("OUT_DIR"))
    serve(app, port=8000)                                       # until Ctrl-C
    export_view(open_item("slide.svs", "out/slide.mask.tif"), "shared/slide-view")

Modules: `tiles` (the Deep Zoom grid, slide and mask tiles), `masks` (label masks read as class indices),
`sources` (the slides a viewer may serve), `cohort_index` (OUT_DIR/cohort.csv read back), `pages` (HTML),
`app` (the WSGI application), `cache` (encoded tiles in memory), `server` (waitress), `export` (a static
folder), `cli` (the command). The server is an optional extra: pip install 'segcls[view]'.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from segcls.core.errors import SegclsError
from segcls.runtime.view.app import DEFAULT_CACHE_BYTES, ViewerApp
from segcls.runtime.view.cohort_index import open_cohort
from segcls.runtime.view.export import ExportResult, export_view
from segcls.runtime.view.pages import DEFAULT_OPACITY
from segcls.runtime.view.sources import ViewItem, beside_mask, open_item

__all__ = ["ExportResult", "ViewItem", "ViewerApp", "export_view", "open_item", "open_viewer", "serve"]


def open_viewer(
    target: str | Path,
    mask: str | Path | None = None,
    geojson: str | Path | None = None,
    summary: str | Path | None = None,
    *,
    slide_mpp: float | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    opacity: float = DEFAULT_OPACITY,
    progress: bool = True,
) -> ViewerApp:
    """The viewer of one slide (`target` a slide file, with its `mask`) or of a cohort (`target` an OUT_DIR of
    `segcls-infer SLIDES... -o OUT_DIR`). Every file is opened now: a slide that cannot be opened raises
    one SegclsError here (in a cohort it is listed with its error instead)."""
    target = Path(target)
    if not 0 <= opacity <= 1:
        raise SegclsError(f"opacity must be between 0 and 1, got {opacity}")
    if target.is_dir():
        if mask is not None or geojson is not None or summary is not None or slide_mpp is not None:
            raise SegclsError(
                f"{target} is a cohort folder: --mask, --geojson, --summary and --slide-mpp are for one slide"
            )
        items = open_cohort(target, progress=progress)
        return ViewerApp(items, cohort=target.absolute().name, cache_bytes=cache_bytes, opacity=opacity)
    if summary is None and mask is not None:
        summary = beside_mask(Path(mask), ".summary.json")
    item = open_item(target, mask, geojson, summary, slide_mpp=slide_mpp)
    return ViewerApp([item], cache_bytes=cache_bytes, opacity=opacity)


def serve(
    app: ViewerApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve `app` until Ctrl-C (or SIGTERM); `on_ready(url)` is called once the socket listens."""
    from segcls.core.cli import require_extra
    from segcls.runtime.view.server import running

    require_extra("view", "waitress")
    # waitress's own loop swallows SystemExit and KeyboardInterrupt: it runs on a thread of its own, so that
    # Ctrl-C and SIGTERM (segcls.core.cli.handle_errors) reach this one and end the command as they should.
    try:
        with running(app, host, port, threads) as url:
            if on_ready is not None:
                on_ready(url)
            threading.Event().wait()
    finally:
        app.close()
