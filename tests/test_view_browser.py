"""segcls-view in a real browser: headless Chromium (Debian's package) driven by Playwright.

The slide and mask have known content (tests/_view_fixtures.py): three class rectangles, a mask at 1.7 um/px
over a 0.5 um/px slide whose levels are 1/3 and 1/9. Each check compares screenshot pixels with what the
viewer must show: class k's colour laid over the tissue at the chosen opacity inside k's rectangle, the bare
tissue once k is toggled off, the mask's edge on the slide's edge at full zoom, the index's statuses.

Skipped when Chromium or Playwright is missing; with SEGCLS_REQUIRE_BROWSER=1 (CI) that skip is a failure.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from _view_fixtures import CLASSES, COLORS, REGIONS, write_cohort, write_known
from PIL import Image

from segcls.runtime.view import open_viewer
from segcls.runtime.view.export import export_view
from segcls.runtime.view.server import running

pytestmark = pytest.mark.browser

# The flags Chromium needs here: no sandbox as root, no GPU, and none of its own network traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 1200, "height": 800}
LOADED = "document.body.dataset.loaded === 'yes' && document.body.dataset.generation === '{generation}'"


def _chromium() -> str | None:
    """SEGCLS_CHROMIUM if set (and there), else the first Chromium on PATH."""
    if "SEGCLS_CHROMIUM" in os.environ:
        return shutil.which(os.environ["SEGCLS_CHROMIUM"])
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install playwright")
    executable = _chromium()
    if executable is None:
        pytest.skip("Chromium is not installed: apt-get install chromium (or set SEGCLS_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        # launch() gives every run a new, empty profile (--user-data-dir in a temporary folder)
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_known(tmp_path_factory.mktemp("browser"))


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    assert not errors, errors


def _screenshot(page) -> np.ndarray:
    time.sleep(0.3)  # tiles fully loaded are drawn on the next animation frame
    return np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(np.float64)


def _wait(page, generation: int) -> None:
    page.wait_for_function(LOADED.format(generation=generation), timeout=60_000)


def _screen_box(page, x0: float, y0: float, x1: float, y1: float, margin: int = 0) -> tuple[int, int, int, int]:
    """Screen pixels (left, top, right, bottom) of a level-0 rectangle, shrunk by `margin` px."""
    corners = page.evaluate(
        """([x0, y0, x1, y1]) => {
            const item = segclsViewer.world.getItemAt(0);
            const a = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(x0, y0));
            const b = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(x1, y1));
            return [a.x, a.y, b.x, b.y];
        }""",
        [x0, y0, x1, y1],
    )
    left, top, right, bottom = corners
    return (round(left) + margin, round(top) + margin, round(right) - margin, round(bottom) - margin)


def _region(shot: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    left, top, right, bottom = box
    assert right - left > 20 and bottom - top > 20, box
    return shot[top:bottom, left:right]


@contextlib.contextmanager
def _viewing(page, files, geojson: bool = True):
    """The known slide served and open in `page`, its tiles loaded."""
    app = open_viewer(files["slide"], files["mask"], files["geojson"] if geojson else None, progress=False)
    try:
        with running(app) as url:
            page.goto(url)
            _wait(page, 1)
            yield
    finally:
        app.close()


def _set_opacity(page, percent: int) -> None:
    page.eval_on_selector("#opacity", f"e => {{ e.value = {percent}; e.dispatchEvent(new Event('input')); }}")


def test_class_colour_is_blended_over_the_tissue_and_toggles_off(page, files):
    with _viewing(page, files):
        _set_opacity(page, 60)
        shown = _screenshot(page)
        _set_opacity(page, 0)
        tissue = _screenshot(page)  # the same view with the mask fully transparent
        _set_opacity(page, 60)
        page.keyboard.press("m")  # the whole mask off, and on again
        flicked = _screenshot(page)
        page.keyboard.press("m")
        assert np.abs(_screenshot(page) - shown).mean() < 0.5
        page.click("#class-1")  # tumour off
        _wait(page, 2)
        toggled = _screenshot(page)
        assert page.locator("#legend").inner_text().split() == [
            "Class", "Area", "(mm²)", "stroma", "0.39", "tumour", "0.19", "necrosis", "0.14",
        ]  # fmt: skip
    for k, rect in REGIONS.items():
        box = _screen_box(page, *rect, margin=4)
        expected = 0.4 * _region(tissue, box) + 0.6 * np.array(COLORS[k])
        error = np.abs(_region(shown, box) - expected)
        assert np.median(error) <= 3 and np.percentile(error, 99) <= 12, (CLASSES[k], np.median(error))
        # and it is not the bare tissue: the check can tell the mask from its absence
        assert np.abs(_region(tissue, box) - expected).mean() > 20
        after = _region(toggled, box)
        reference = _region(tissue, box) if k == 1 else _region(shown, box)
        assert np.abs(after - reference).mean() <= 2, (CLASSES[k], "after toggling tumour off")
    assert np.abs(flicked - tissue).mean() < 0.5
    # glass and unlabelled tissue are never tinted
    gap = _screen_box(page, 1420, 300, 1580, 1700, margin=4)
    assert np.abs(_region(shown, gap) - _region(tissue, gap)).mean() <= 2


def test_mask_edge_stays_on_the_slide_edge_at_full_zoom(page, files):
    """At the most zoomed-in level a mask pixel is 3.4 slide px wide: the tumour's left edge on screen must be
    within one mask pixel of where the slide's rectangle starts (a mask drawn to the wrong scale is off by
    hundreds of pixels here)."""
    with _viewing(page, files, geojson=False):
        x0, y0, _, _ = REGIONS[1]
        page.evaluate(
            """([x, y]) => {
                const item = segclsViewer.world.getItemAt(0);
                const bounds = item.imageToViewportRectangle(x - 60, y - 40, 120, 80);
                segclsViewer.viewport.fitBounds(bounds, true);
            }""",
            [x0, y0 + 200],
        )
        _wait(page, 1)
        _set_opacity(page, 100)
        shot = _screenshot(page)
        scale = page.evaluate(
            "(() => { const i = segclsViewer.world.getItemAt(0); "
            "return i.imageToViewerElementCoordinates(new OpenSeadragon.Point(1, 0)).x - "
            "i.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0)).x; })()"
        )
        edge = _screen_box(page, x0, y0, x0 + 1, y0 + 1)[0]
        width = page.evaluate("segclsViewer.element.clientWidth")
    assert scale > 6  # several screen px per slide px: the top Deep Zoom level, magnified
    row = shot[VIEWPORT["height"] // 2, :width]
    red = np.all(np.abs(row - COLORS[1]) <= 6, axis=-1)
    first = int(np.argmax(red))
    assert red.any() and red[first:].mean() > 0.9
    mask_px = 3000 / 882 * scale
    assert abs(first - edge) <= mask_px + 2, (first, edge, mask_px)


def test_pointer_shows_position_and_class(page, files):
    with _viewing(page, files, geojson=False):
        assert "Slide class: tumour (score 0.90)" in page.inner_text("#slide-class")
        x0, y0, x1, y1 = REGIONS[2]
        left, top, right, bottom = _screen_box(page, x0, y0, x1, y1)
        page.mouse.move((left + right) / 2, (top + bottom) / 2)
        page.wait_for_function("document.getElementById('cursor').innerText.includes('necrosis')", timeout=20_000)
        text = page.inner_text("#cursor")
        page.mouse.move(5, VIEWPORT["height"] - 5)  # off the slide
        page.wait_for_function("document.getElementById('cursor').innerText.includes('Outside')", timeout=20_000)
    x_um, y_um = (float(text.split(f"{axis} ")[1].split(" µm")[0]) for axis in "xy")
    pointer_um = 1.5 * 0.5 * (x1 - x0) / (right - left)  # 1.5 screen px, in µm
    assert abs(x_um - (x0 + x1) / 2 * 0.5) <= pointer_um and abs(y_um - (y0 + y1) / 2 * 0.5) <= pointer_um, text


def test_outlines_are_drawn_on_the_region_edges(page, files):
    with _viewing(page, files):
        _set_opacity(page, 0)
        before = _screenshot(page)
        page.check("#show-outlines")
        page.wait_for_function("document.body.dataset.outlines === 'shown'", timeout=20_000)
        after = _screenshot(page)
        x0, y0, x1, y1 = _screen_box(page, *REGIONS[2])
    middle = (y0 + y1) // 2
    changed = np.abs(after - before).sum(-1) > 60
    assert changed[middle, x0 - 2 : x0 + 3].any() and changed[middle, x1 - 2 : x1 + 3].any()
    assert not changed[middle, x0 + 10 : x1 - 10].any()  # inside the region: untouched


def test_cohort_index_lists_each_slide_with_its_status(page, files, tmp_path):
    out = write_cohort(tmp_path, files)
    app = open_viewer(out, progress=False)
    with running(app) as url:
        page.goto(url)
        cards = page.locator("article.card")
        statuses = {cards.nth(i).get_attribute("data-slide"): cards.nth(i).get_attribute("data-status")
                    for i in range(cards.count())}  # fmt: skip
        assert statuses == {"known.tif": "done", "other.tif": "failed", "gone.svs": "unreadable"}
        assert "SlideError: cannot read tile 3" in page.locator('[data-slide="other.tif"]').inner_text()
        page.wait_for_function(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)", timeout=30_000
        )
        thumb = page.locator('[data-slide="known.tif"] img')
        assert thumb.evaluate("i => i.naturalWidth") == 320
        page.click('[data-slide="known.tif"] h2 a')
        _wait(page, 1)
        assert page.inner_text("h1") == "known.tif"
        assert page.locator("a.back").get_attribute("href") == "/"
    app.close()


def test_export_opens_from_disk(page, files, tmp_path):
    app = open_viewer(files["slide"], files["mask"], files["geojson"], progress=False)
    export_view(app.order[0], tmp_path / "shared", progress=False)
    app.close()
    page.goto((tmp_path / "shared" / "index.html").as_uri())
    _wait(page, 1)
    assert page.locator("#class-0").is_disabled() and page.locator("#toggle-note").is_visible()
    shot = _screenshot(page)
    box = _screen_box(page, *REGIONS[0], margin=4)
    # stroma's green at 50 % over the pink tissue (mean colour about (215, 160, 195))
    mean = _region(shot, box).reshape(-1, 3).mean(0)
    assert np.abs(mean - (0.5 * np.array((215, 160, 195)) + 0.5 * np.array(COLORS[0]))).max() < 12, mean
    page.check("#show-outlines")
    page.wait_for_function("document.body.dataset.outlines === 'shown'", timeout=20_000)
