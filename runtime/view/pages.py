"""The viewer's HTML: one slide's page (served, or exported beside its tiles) and a cohort's index.

The page's JavaScript (static/viewer.js) reads a JSON config embedded in the page, which says where the
tiles are, so the same page works from the server and from an exported folder opened from disk.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from string import Template

from segcls.runtime.view.sources import ViewItem

# The files a page loads, by the name it asks for them under: read once, served from memory.
STATIC_FILES = (
    "viewer.js",
    "viewer.css",
    "openseadragon/openseadragon.min.js",
    "openseadragon/LICENSE.txt",
)
DEFAULT_OPACITY = 0.5


def static_files() -> dict[str, bytes]:
    """The viewer's static files (OpenSeadragon, its licence, the page's JS and CSS) by name."""
    root = resources.files("segcls.runtime.view") / "static"
    return {name: root.joinpath(*name.split("/")).read_bytes() for name in STATIC_FILES}


def _template(name: str) -> Template:
    return Template((resources.files("segcls.runtime.view") / "static" / name).read_text(encoding="utf-8"))


def viewer_config(item: ViewItem, urls: dict[str, str | None], toggles: bool, opacity: float) -> dict:
    """What viewer.js needs: the grid, the tile URL templates ("{level}/{x}_{y}"), the classes."""
    grid = item.tiles.grid
    classes = []
    if item.mask_tiles is not None:
        areas = item.areas_mm2() or {}
        mask_classes = item.mask_tiles.classes
        classes = [
            {"index": i, "name": name, "color": list(color), "area": areas.get(name)}
            for i, (name, color) in enumerate(zip(mask_classes.names, mask_classes.colors, strict=True))
        ]
    return {
        "name": item.name,
        "width": grid.size[0],
        "height": grid.size[1],
        "tileSize": grid.tile_size,
        "overlap": grid.overlap,
        "mpp": item.mpp,
        "slideTiles": urls["slide"],
        "maskTiles": urls["mask"] if item.mask_tiles is not None else None,
        "classUrl": urls.get("class") if item.mask_tiles is not None else None,
        "geojsonUrl": urls.get("geojson") if item.geojson_path is not None else None,
        "classes": classes,
        "toggles": toggles,
        "opacity": opacity,
    }


def _slide_class_text(item: ViewItem) -> str:
    slide_class = item.slide_class()
    if not slide_class:
        return ""
    score = (slide_class.get("scores") or {}).get(slide_class["class"])
    score_text = f" (score {score:.2f})" if isinstance(score, int | float) else ""
    return f"Slide class: <strong>{html.escape(str(slide_class['class']))}</strong>{score_text}"


def viewer_page(item: ViewItem, config: dict, static_prefix: str, back: str | None = None) -> str:
    """The HTML page of one slide; `static_prefix` is where viewer.js, viewer.css and openseadragon/ are."""
    # JSON inside <script>: "</" would end the element early.
    config_text = json.dumps(config).replace("</", "<\\/")
    details = [f"{config['width']} x {config['height']} px"]
    if item.mpp:
        details.append(f"{item.mpp:.4g} µm/px")
    if item.mask_path is not None:
        details.append(f"mask {html.escape(item.mask_path.name)}")
    return _template("viewer.html").substitute(
        title=html.escape(item.name),
        static=html.escape(static_prefix),
        back=f'<a class="back" href="{html.escape(back)}">&larr; All slides</a>' if back else "",
        slide_class=_slide_class_text(item),
        mask_hidden="" if item.mask_tiles is not None else "hidden",
        outlines_hidden="" if config.get("geojsonUrl") else "hidden",
        details=" · ".join(details),
        config=config_text,
    )


def _number(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "–"


def _card(item: ViewItem) -> str:
    name = html.escape(item.name)
    viewable = item.tiles is not None
    link = f"/view/{html.escape(item.key)}"
    title = f'<a href="{link}">{name}</a>' if viewable else name
    image = (
        f'<a href="{link}"><img src="/thumb/{html.escape(item.key)}.jpeg" alt="{name} with its mask" '
        f'loading="lazy"></a>'
        if viewable
        else '<div class="placeholder">no image</div>'
    )
    rows = [f'<tr><td>Status</td><td><span class="status status-{html.escape(item.status)}">'
            f"{html.escape(item.status)}</span></td></tr>"]  # fmt: skip
    if item.error:
        rows.append(f'<tr><td>Error</td><td class="error">{html.escape(item.error)}</td></tr>')
    if item.slide_class():
        rows.append(f"<tr><td colspan=2>{_slide_class_text(item)}</td></tr>")
    run = item.run
    units = (("tiles", ".0f", " tiles"), ("seconds", ".1f", " s"), ("tiles_per_s", ".2f", " tiles/s"))
    parts = [f"{format(run[k], fmt)}{unit}" for k, fmt, unit in units if isinstance(run.get(k), int | float)]
    if parts:
        rows.append(f"<tr><td>Run</td><td>{', '.join(parts)}</td></tr>")
    areas = item.areas_mm2() if viewable else None
    if areas and item.mask_tiles is not None:
        cells = []
        for name_, color in zip(item.mask_tiles.classes.names, item.mask_tiles.classes.colors, strict=True):
            swatch = f'<span class="swatch" style="background: rgb{tuple(color)}"></span>'
            area = _number(areas.get(name_), ".2f")
            cells.append(f'<tr><td>{swatch} {html.escape(name_)}</td><td class="num">{area} mm²</td></tr>')
        rows += cells
    return (
        f'<article class="card" data-slide="{name}" data-status="{html.escape(item.status)}">'
        f"<h2>{title}</h2>{image}<table>{''.join(rows)}</table></article>"
    )


def index_page(title: str, items: list[ViewItem]) -> str:
    """The cohort index: a card per slide with its overlay thumbnail, status, slide class, areas, speed."""
    counts = {s: sum(i.status == s for i in items) for s in ("done", "skipped", "failed", "unreadable")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    cards = "\n".join(_card(item) for item in items)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · segcls-view</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/viewer.css">
</head>
<body class="index-page">
<h1>{html.escape(title)}</h1>
<p class="note">{len(items)} slides: {summary}. Thumbnails show each mask over its slide; click one to open it.</p>
<section class="cards">
{cards}
</section>
</body>
</html>
"""
