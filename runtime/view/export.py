"""A viewer for sharing without a server: the page, OpenSeadragon and every Deep Zoom tile in one folder.

    DIR/index.html                  open it from disk (file://) or put DIR on any static web host
    DIR/static/                     viewer.js, viewer.css, openseadragon/ (with its licence)
    DIR/slide_files/LEVEL/C_R.jpeg  the slide's tiles, the grid `segcls-view` serves
    DIR/mask_files/LEVEL/C_R.png    the mask's tiles, every class shown
    DIR/outlines.js                 the GeoJSON, as a script (browsers do not fetch() from file://)

What the server does per request cannot be done from files: the per-class toggles (one mask tile set per
combination) and the class under the pointer are left out; the opacity slider, legend and outlines stay.
The folder is written under a temporary name and renamed when complete; `overwrite` replaces a finished one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from segcls.core.atomic import check_overwrite
from segcls.core.errors import SegclsError
from segcls.runtime.cores import available_cores
from segcls.runtime.view.pages import DEFAULT_OPACITY, static_files, viewer_config, viewer_page
from segcls.runtime.view.sources import ViewItem
from segcls.runtime.view.tiles import encode_jpeg, encode_labels


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    tiles: int
    bytes: int


def check_target(folder: Path, overwrite: bool) -> None:
    """Fail before any work: the parent must exist, and a finished export is replaced only with overwrite."""
    parent = folder.absolute().parent
    if not parent.is_dir():
        raise SegclsError(f"output folder's parent does not exist: {parent}")
    if folder.exists() and not folder.is_dir():
        raise SegclsError(f"{folder} exists and is not a folder")
    check_overwrite(folder, overwrite=overwrite)


def export_view(
    item: ViewItem,
    folder: str | Path,
    *,
    overwrite: bool = False,
    opacity: float = DEFAULT_OPACITY,
    workers: int | None = None,
    progress: bool = True,
) -> ExportResult:
    """Write `item`'s viewer with all its tiles to `folder` (see the module docstring)."""
    folder = Path(folder)
    check_target(folder, overwrite)
    if item.tiles is None:
        raise SegclsError(f"{item.name} cannot be exported: {item.error}")
    grid = item.tiles.grid
    addresses = [(lv, c, r) for lv in range(grid.level_count) for r in range(grid.level_tiles[lv][1])
                 for c in range(grid.level_tiles[lv][0])]  # fmt: skip
    layers = ["slide"] + (["mask"] if item.mask_tiles is not None else [])
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.absolute().parent))
    try:
        written = _write_static(item, tmp, opacity)
        for layer in layers:
            for level in range(grid.level_count):
                (tmp / f"{layer}_files" / str(level)).mkdir(parents=True)
        jobs = [(layer, a) for layer in layers for a in addresses]
        with (
            ThreadPoolExecutor(workers or available_cores()) as pool,
            tqdm(total=len(jobs), desc="Exporting tiles", unit="tile", disable=not progress) as bar,
        ):
            for size in pool.map(lambda job: _write_tile(item, tmp, *job), jobs):
                written += size
                bar.update(1)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would keep the folder from anyone it is shared with
        _replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(folder, len(jobs), written)


def _write_tile(item: ViewItem, root: Path, layer: str, address: tuple[int, int, int]) -> int:
    level, col, row = address
    if layer == "slide":
        data, suffix = encode_jpeg(item.tiles.tile(*address)), "jpeg"
    else:
        data, suffix = encode_labels(item.mask_tiles.labels(*address), item.mask_tiles.classes), "png"
    (root / f"{layer}_files" / str(level) / f"{col}_{row}.{suffix}").write_bytes(data)
    return len(data)


def _write_static(item: ViewItem, root: Path, opacity: float) -> int:
    written = 0
    for name, data in static_files().items():
        path = root / "static" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += len(data)
    urls = {"slide": "slide_files/{level}/{x}_{y}.jpeg", "mask": "mask_files/{level}/{x}_{y}.png",
            "geojson": "outlines.js" if item.geojson_path is not None else None}  # fmt: skip
    if item.geojson_path is not None:
        geojson = json.loads(Path(item.geojson_path).read_text())
        script = "window.SEGCLS_GEOJSON = " + json.dumps(geojson, separators=(",", ":")) + ";\n"
        (root / "outlines.js").write_text(script)
        written += len(script)
    config = viewer_config(item, urls, toggles=False, opacity=opacity)
    page = viewer_page(item, config, "static/").encode()
    (root / "index.html").write_bytes(page)
    return written + len(page)


def _replace(tmp: Path, folder: Path) -> None:
    """Rename the finished `tmp` onto `folder`, moving a previous export aside first and removing it after."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.absolute().parent))
        os.replace(folder, old / folder.name)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
