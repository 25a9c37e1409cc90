"""segcls-view's web application: routes, refusals (400/404/405, never a traceback), cache headers, the bounded
tile cache, the cohort index from cohort.csv, and tiles served concurrently by the real server."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
from _view_fixtures import CLASSES, REGIONS, write_cohort, write_known, write_slide

from segcls.core.errors import SegclsError, SlideError
from segcls.runtime.cohort import CSV_NAME
from segcls.runtime.slide import Slide
from segcls.runtime.view import ViewerApp, open_viewer
from segcls.runtime.view.cohort_index import read_cohort
from segcls.runtime.view.server import running
from segcls.runtime.view.sources import ViewItem, item_key
from segcls.runtime.view.tiles import SlideTiles


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_known(tmp_path_factory.mktemp("view"))


@pytest.fixture(scope="module")
def app(files) -> ViewerApp:
    app = open_viewer(files["slide"], files["mask"], files["geojson"], progress=False)
    yield app
    app.close()


def get(app, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    """One request through the WSGI interface: (status, headers, body)."""
    path, _, query = path.partition("?")
    answer = {}

    def start_response(status: str, headers: list) -> None:
        answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)

    body = b"".join(app({"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query}, start_response))
    return answer["status"], answer["headers"], body


def test_one_slide_redirects_to_its_viewer_page(app):
    key = app.order[0].key
    status, headers, _ = get(app, "/")
    assert status == 302 and headers["Location"] == f"/view/{key}"
    status, headers, body = get(app, f"/view/{key}")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    config = json.loads(page.split('type="application/json">')[1].split("</script>")[0])
    assert (config["width"], config["height"], config["tileSize"], config["overlap"]) == (3000, 2000, 254, 1)
    assert [c["name"] for c in config["classes"]] == list(CLASSES)
    # the summary beside the mask gives the areas and the slide class
    assert [c["area"] for c in config["classes"]] == [0.39, 0.19, 0.14]
    assert "Slide class: <strong>tumour</strong>" in page
    assert "/static/openseadragon/openseadragon.min.js" in page and "cdn" not in page.lower()


def test_tiles_carry_cache_headers_and_come_from_the_cache_the_second_time(app):
    key = app.order[0].key
    status, headers, first = get(app, f"/tiles/{key}/slide/12/3_2.jpeg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert "max-age=31536000" in headers["Cache-Control"] and "immutable" in headers["Cache-Control"]
    hits = app.cache.hits
    assert get(app, f"/tiles/{key}/slide/12/3_2.jpeg")[2] == first
    assert app.cache.hits == hits + 1
    status, headers, png = get(app, f"/tiles/{key}/mask/12/3_2.png?hide=1")
    assert status == 200 and headers["Content-Type"] == "image/png" and png.startswith(b"\x89PNG")
    status, headers, dzi = get(app, f"/tiles/{key}/slide.dzi")
    assert status == 200 and b'TileSize="254"' in dzi


@pytest.mark.parametrize(
    "path",
    [
        "/view/nobody-12345678",
        "/tiles/nobody-12345678/slide/0/0_0.jpeg",
        "/tiles/{key}/slide/13/0_0.jpeg",  # one level past the top (levels 0..12)
        "/tiles/{key}/slide/12/12_0.jpeg",  # 12 x 8 tiles at level 12
        "/tiles/{key}/mask/12/0_8.png",
        "/static/../../etc/passwd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/viewer.html",  # a template, not a file the page loads
        "/../../etc/passwd",
        "/tiles/{key}/slide/-1/0_0.jpeg",
        "/tiles/{key}/slide/1/0_0.tif",
        "/geojson/nobody-12345678.geojson",
        "/favicon.ico",
    ],
)
def test_unknown_things_are_404_with_one_line(app, path):
    status, headers, body = get(app, path.format(key=app.order[0].key))
    assert status == 404
    assert headers["Content-Type"].startswith("text/plain") and body.count(b"\n") == 1
    assert b"Traceback" not in body


@pytest.mark.parametrize(
    "path",
    [
        "/tiles/{key}/mask/12/0_0.png?hide=x",
        "/tiles/{key}/mask/12/0_0.png?hide=7",
        "/tiles/{key}/mask/12/0_0.png?hide=0&hide=1",
        "/tiles/{key}/mask/12/0_0.png?colour=red",
        "/tiles/{key}/mask/12/0_0.jpeg",
        "/tiles/{key}/slide/12/0_0.png",
        "/tiles/{key}/slide/12/0_0.jpeg?hide=1",
        "/api/{key}/class",
        "/api/{key}/class?x=1",
        "/api/{key}/class?x=a&y=2",
        "/api/{key}/class?x=1&y=2&z=3",
    ],
)
def test_malformed_requests_are_400(app, path):
    status, _, body = get(app, path.format(key=app.order[0].key))
    assert status == 400 and body.count(b"\n") == 1


def test_other_methods_are_405_and_head_has_no_body(app):
    key = app.order[0].key
    status, headers, _ = get(app, f"/view/{key}", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, headers, body = get(app, f"/tiles/{key}/slide/12/0_0.jpeg", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_class_lookup_and_geojson(app, files):
    key = app.order[0].key
    for k, (x0, y0, x1, y1) in REGIONS.items():
        status, _, body = get(app, f"/api/{key}/class?x={(x0 + x1) // 2}&y={(y0 + y1) // 2}")
        assert status == 200 and json.loads(body) == {
            "x": (x0 + x1) // 2, "y": (y0 + y1) // 2, "index": k, "name": CLASSES[k],
        }  # fmt: skip
    assert json.loads(get(app, f"/api/{key}/class?x=10&y=10")[2])["name"] is None
    status, _, body = get(app, f"/geojson/{key}.geojson")
    assert status == 200 and body == files["geojson"].read_bytes()


def test_the_tile_cache_is_bounded(files):
    app = open_viewer(files["slide"], files["mask"], cache_bytes=40_000, progress=False)
    key = app.order[0].key
    for col in range(12):
        for row in range(8):
            assert get(app, f"/tiles/{key}/slide/12/{col}_{row}.jpeg")[0] == 200
    assert 0 < app.cache.bytes <= 40_000 and app.cache.misses == 96
    app.close()


class _BrokenSlide(Slide):
    """A slide whose pixels cannot be read, or that waits for `gate` before giving them (white)."""

    def __init__(self, error: Exception | None = None, gate: threading.Event | None = None) -> None:
        super().__init__("broken.svs")
        self.level_dimensions = ((1000, 800),)
        self.error, self.gate = error, gate

    @property
    def properties(self) -> MappingProxyType:
        return MappingProxyType({})

    def _native_mpp(self) -> float | None:
        return 0.5

    def read_region(self, location, level, size) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(10)
        if self.error is not None:
            raise self.error
        return np.full((size[1], size[0], 3), 255, np.uint8)


def _item(slide: Slide, name: str) -> ViewItem:
    return ViewItem(item_key(Path(name)), name, Path(name), tiles=SlideTiles(slide))


def test_an_unexpected_failure_is_500_without_a_traceback(caplog):
    items = [_item(_BrokenSlide(RuntimeError("boom")), "a.svs"), _item(_BrokenSlide(SlideError("bad tile")), "b.svs")]
    app = ViewerApp(items)
    status, _, body = get(app, f"/tiles/{app.order[0].key}/slide/10/0_0.jpeg")
    assert status == 500 and body == b"internal error: see the server's log\n"
    assert "boom" in caplog.text  # the log has the details
    status, _, body = get(app, f"/tiles/{app.order[1].key}/slide/10/0_0.jpeg")
    assert status == 500 and body == b"bad tile\n"


def test_tiles_are_served_concurrently():
    """While one tile's read is blocked, another request is answered: the server has several threads."""
    gate = threading.Event()
    slow, fast = _item(_BrokenSlide(gate=gate), "slow.svs"), _item(_BrokenSlide(), "fast.svs")
    app = ViewerApp([slow, fast], cohort="two")
    with running(app, threads=4) as url:
        answers = {}
        blocked = threading.Thread(
            target=lambda: answers.setdefault("slow", _fetch(f"{url}tiles/{slow.key}/slide/10/0_0.jpeg"))
        )
        blocked.start()
        time.sleep(0.3)
        start = time.perf_counter()
        assert _fetch(f"{url}tiles/{fast.key}/slide/10/0_0.jpeg") == 200
        assert time.perf_counter() - start < 5 and "slow" not in answers
        gate.set()
        blocked.join(10)
        assert answers["slow"] == 200
    assert url.startswith("http://127.0.0.1:")


def _fetch(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_cohort_index_lists_every_slide_with_its_status(files, tmp_path):
    out = write_cohort(tmp_path, files)
    app = open_viewer(out, progress=False)
    status, _, body = get(app, "/")
    page = body.decode()
    assert status == 200
    assert 'data-slide="known.tif" data-status="done"' in page
    assert 'data-slide="other.tif" data-status="failed"' in page and "SlideError: cannot read tile 3" in page
    assert 'data-slide="gone.svs" data-status="unreadable"' in page and "slide not found" in page
    assert "40 tiles, 12.5 s, 3.20 tiles/s" in page and "<td>0.4 s</td>" in page and "3.00 mm²" in page
    assert "Slide class: <strong>tumour</strong>" in page
    known, other, gone = app.order
    assert known.geojson_path == out / "known.geojson" and known.mask_tiles is not None
    assert other.mask_tiles is None  # failed: no mask, but the slide can be looked at
    for item, expected in ((known, 200), (other, 200), (gone, 404)):
        assert get(app, f"/thumb/{item.key}.jpeg")[0] == expected
        assert get(app, f"/view/{item.key}")[0] == expected
    assert get(app, f"/tiles/{other.key}/mask/5/0_0.png")[0] == 404
    app.close()


def test_cohort_csv_is_read_by_column_name(tmp_path):
    (tmp_path / CSV_NAME).write_text("error,mask,status,slide\n,m.tif,done,s.svs\n")
    rows = read_cohort(tmp_path)
    assert (rows[0].slide, rows[0].status, rows[0].mask) == ("s.svs", "done", "m.tif")
    (tmp_path / CSV_NAME).write_text("slide,state\ns.svs,done\n")
    with pytest.raises(SegclsError, match="missing status, mask"):
        read_cohort(tmp_path)
    with pytest.raises(SegclsError, match=r"no cohort\.csv"):
        read_cohort(tmp_path / "nothing")


def test_urls_change_when_a_file_changes(files, tmp_path):
    slide = write_slide(tmp_path / "s.tif", size=(600, 400))
    before = item_key(slide)
    assert item_key(slide) == before
    write_slide(slide, size=(640, 400))
    assert item_key(slide) != before and before.startswith("s-")
