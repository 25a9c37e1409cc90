"""The viewer's web application: a WSGI callable over a fixed table of slides, served by any WSGI server.

    GET /                                   the cohort index (several slides) or a redirect to the one slide
    GET /view/KEY                           a slide's viewer page
    GET /tiles/KEY/slide/LEVEL/COL_ROW.jpeg  Deep Zoom slide tiles (and /tiles/KEY/slide.dzi)
    GET /tiles/KEY/mask/LEVEL/COL_ROW.png    mask tiles in the class colours; ?hide=0,3 leaves classes out
    GET /api/KEY/class?x=X&y=Y              the class under level-0 pixel (X, Y), as JSON
    GET /geojson/KEY.geojson                the slide's GeoJSON, when one was given
    GET /thumb/KEY.jpeg                     the slide with its mask, small, for the index
    GET /static/NAME                        OpenSeadragon, the page's JS and CSS (read once at start)

A request names a KEY of the table, never a path: nothing in a URL reaches the filesystem. A malformed
request gets 400, an unknown slide or a tile outside the pyramid 404, another method 405, each with a
one-line text body; an unexpected failure is logged and answered 500 without a traceback. Tiles are
rendered on the server's threads, kept in a byte-bounded cache, and sent with long-lived cache headers
(their URLs change when a file changes: see sources.item_key).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs

from PIL import Image

from segcls.core.errors import SegclsError
from segcls.runtime.view.cache import TileCache
from segcls.runtime.view.pages import DEFAULT_OPACITY, index_page, static_files, viewer_config, viewer_page
from segcls.runtime.view.sources import ViewItem, thumbnail
from segcls.runtime.view.tiles import TileNotFound, encode_jpeg, encode_labels, parse_hidden

log = logging.getLogger("segcls.view")

DEFAULT_CACHE_BYTES = 256 << 20
# Tiles and thumbnails: their URLs carry a hash of the files, so a cached copy is never stale.
TILE_CACHE_CONTROL = "private, max-age=31536000, immutable"
PAGE_CACHE_CONTROL = "no-cache"

_KEY = r"(?P<key>[A-Za-z0-9_-]{1,80})"
_ADDRESS = r"(?P<level>\d{1,3})/(?P<col>\d{1,7})_(?P<row>\d{1,7})"
_ROUTES = [
    ("index", re.compile(r"^/$")),
    ("viewer", re.compile(rf"^/view/{_KEY}$")),
    ("tile", re.compile(rf"^/tiles/{_KEY}/(?P<layer>slide|mask)/{_ADDRESS}\.(?P<fmt>jpeg|png)$")),
    ("dzi", re.compile(rf"^/tiles/{_KEY}/slide\.dzi$")),
    ("class", re.compile(rf"^/api/{_KEY}/class$")),
    ("geojson", re.compile(rf"^/geojson/{_KEY}\.geojson$")),
    ("thumb", re.compile(rf"^/thumb/{_KEY}\.jpeg$")),
    ("static", re.compile(r"^/static/(?P<name>[A-Za-z0-9_./-]{1,100})$")),
]  # fmt: skip
_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain; charset=utf-8"}


class HttpError(Exception):
    """An answer other than 200, with a one-line reason for the body."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


Response = tuple[HTTPStatus, str, bytes, str]  # status, content type, body, Cache-Control


class ViewerApp:
    """The WSGI application over `items` (one slide, or a cohort listed on the index page)."""

    def __init__(
        self,
        items: list[ViewItem],
        *,
        cohort: str | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        opacity: float = DEFAULT_OPACITY,
    ) -> None:
        if not items:
            raise SegclsError("nothing to view: no slides")
        self.items = {item.key: item for item in items}
        self.order = items
        self.cohort = cohort
        self.opacity = opacity
        self.cache = TileCache(cache_bytes)
        self.static = static_files()
        self._geojson_bytes: dict[str, bytes] = {}
        self._geojson_lock = threading.Lock()

    # -- WSGI ---------------------------------------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if method not in ("GET", "HEAD"):
                raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed: GET only")
            status, content_type, body, cache = self.respond(
                environ.get("PATH_INFO", "/"), environ.get("QUERY_STRING", "")
            )
        except HttpError as e:
            status, content_type, body, cache = e.status, "text/plain; charset=utf-8", f"{e}\n".encode(), "no-store"
        except SegclsError as e:  # a file that opened but cannot be read here: one line, both sides
            log.warning("%s: %s", environ.get("PATH_INFO"), e)
            status, content_type = HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8"
            body, cache = f"{e}\n".encode(), "no-store"
        except Exception:  # a bug or an unreadable file: say so in the log, never to the browser
            log.exception("error answering %s", environ.get("PATH_INFO"))
            status, content_type = HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8"
            body, cache = b"internal error: see the server's log\n", "no-store"
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", cache),
                   ("X-Content-Type-Options", "nosniff")]  # fmt: skip
        if status == HTTPStatus.FOUND:
            headers.append(("Location", body.decode()))
            body = b""
            headers[1] = ("Content-Length", "0")
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            headers.append(("Allow", "GET, HEAD"))
        start_response(f"{status.value} {status.phrase}", headers)
        return [b""] if method == "HEAD" else [body]

    def respond(self, path: str, query: str) -> Response:
        """(status, content type, body, Cache-Control) for a GET of `path`; HttpError for a refusal."""
        for name, pattern in _ROUTES:
            match = pattern.match(path)
            if match:
                return getattr(self, f"_{name}")(query=query, **match.groupdict())
        raise HttpError(HTTPStatus.NOT_FOUND, f"not found: {path[:100]}")

    # -- routes ---------------------------------------------------------------------------------------------
    def _item(self, key: str, viewable: bool = True) -> ViewItem:
        item = self.items.get(key)
        if item is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no slide {key}")
        if viewable and item.tiles is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"{item.name} cannot be shown: {item.error}")
        return item

    def _index(self, query: str) -> Response:
        if self.cohort is None:
            return HTTPStatus.FOUND, "text/plain", f"/view/{self.order[0].key}".encode(), PAGE_CACHE_CONTROL
        html = index_page(self.cohort, self.order)
        return HTTPStatus.OK, "text/html; charset=utf-8", html.encode(), PAGE_CACHE_CONTROL

    def urls(self, item: ViewItem) -> dict[str, str]:
        key = item.key
        return {
            "slide": f"/tiles/{key}/slide/{{level}}/{{x}}_{{y}}.jpeg",
            "mask": f"/tiles/{key}/mask/{{level}}/{{x}}_{{y}}.png",
            "class": f"/api/{key}/class",
            "geojson": f"/geojson/{key}.geojson",
        }

    def _viewer(self, key: str, query: str) -> Response:
        item = self._item(key)
        config = viewer_config(item, self.urls(item), toggles=True, opacity=self.opacity)
        page = viewer_page(item, config, "/static/", back="/" if self.cohort is not None else None)
        return HTTPStatus.OK, "text/html; charset=utf-8", page.encode(), PAGE_CACHE_CONTROL

    def _tile(self, key: str, layer: str, level: str, col: str, row: str, fmt: str, query: str) -> Response:
        item = self._item(key)
        address = (int(level), int(col), int(row))
        if layer == "slide":
            if fmt != "jpeg" or query:
                raise HttpError(HTTPStatus.BAD_REQUEST, "slide tiles are .jpeg and take no parameters")
            make = lambda: encode_jpeg(item.tiles.tile(*address))  # noqa: E731
            body = self._cached((key, "slide", *address), make)
            return HTTPStatus.OK, "image/jpeg", body, TILE_CACHE_CONTROL
        if item.mask_tiles is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"{item.name} has no mask")
        if fmt != "png":
            raise HttpError(HTTPStatus.BAD_REQUEST, "mask tiles are .png")
        params = _params(query, {"hide"})
        try:
            hidden = parse_hidden(params.get("hide", ""), len(item.mask_tiles.classes.names))
        except ValueError as e:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(e)) from None
        mask = item.mask_tiles
        make = lambda: encode_labels(mask.labels(*address), mask.classes, hidden)  # noqa: E731
        body = self._cached((key, "mask", *address, hidden), make)
        return HTTPStatus.OK, "image/png", body, TILE_CACHE_CONTROL

    def _cached(self, key: tuple, make: Callable[[], bytes]) -> bytes:
        try:
            return self.cache.get_or_make(key, make)
        except TileNotFound as e:
            raise HttpError(HTTPStatus.NOT_FOUND, str(e)) from None

    def _dzi(self, key: str, query: str) -> Response:
        item = self._item(key)
        return HTTPStatus.OK, "application/xml", item.tiles.grid.dzi("jpeg").encode(), TILE_CACHE_CONTROL

    def _class(self, key: str, query: str) -> Response:
        item = self._item(key)
        if item.mask_tiles is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"{item.name} has no mask")
        params = _params(query, {"x", "y"})
        try:
            x, y = float(params["x"]), float(params["y"])
        except (KeyError, ValueError):
            raise HttpError(HTTPStatus.BAD_REQUEST, "expected ?x=X&y=Y, level-0 pixels") from None
        index = item.mask_tiles.class_at(x, y)
        name = None if index is None else item.mask_tiles.classes.names[index]
        body = json.dumps({"x": x, "y": y, "index": index, "name": name}).encode()
        return HTTPStatus.OK, "application/json", body, "no-store"

    def _geojson(self, key: str, query: str) -> Response:
        item = self._item(key)
        if item.geojson_path is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"{item.name} has no GeoJSON")
        with self._geojson_lock:
            if key not in self._geojson_bytes:
                self._geojson_bytes[key] = Path(item.geojson_path).read_bytes()
        return HTTPStatus.OK, "application/geo+json", self._geojson_bytes[key], TILE_CACHE_CONTROL

    def _thumb(self, key: str, query: str) -> Response:
        item = self._item(key)

        def make() -> bytes:
            return encode_jpeg(Image.fromarray(thumbnail(item)), quality=85)

        return HTTPStatus.OK, "image/jpeg", self._cached((key, "thumb"), make), TILE_CACHE_CONTROL

    def _static(self, name: str, query: str) -> Response:
        body = self.static.get(name)
        if body is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no static file {name}")
        content_type = _TYPES.get(Path(name).suffix, "application/octet-stream")
        return HTTPStatus.OK, content_type, body, "public, max-age=3600"

    def close(self) -> None:
        for item in self.order:
            item.close()


def _params(query: str, allowed: set[str]) -> dict[str, str]:
    """One value per allowed parameter; 400 for an unknown or repeated one."""
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=8)
    except ValueError:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"malformed query string {query[:60]!r}") from None
    unknown = set(parsed) - allowed
    if unknown:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"unknown parameter {sorted(unknown)[0][:30]!r}")
    if any(len(v) > 1 for v in parsed.values()):
        raise HttpError(HTTPStatus.BAD_REQUEST, "each parameter once")
    return {k: v[0] for k, v in parsed.items()}
