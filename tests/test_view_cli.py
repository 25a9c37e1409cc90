"""The segcls-view command: errors at start as one `Error:` line, the static export, and the real command
serving (warning for a --host other than this machine's, stopping cleanly on SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from _view_fixtures import write_geojson, write_slide, write_test_mask
from click.testing import CliRunner

from segcls.runtime.view.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    return {
        "slide": write_slide(folder / "small.tif", size=(900, 600)),
        "mask": write_test_mask(folder / "small.mask.tif", size=(900, 600)),
        "big_mask": write_test_mask(folder / "big.mask.tif"),
        "geojson": write_geojson(folder / "small.geojson"),
    }


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope.svs"], "nope.svs' does not exist"),
        (["{slide}", "--mask", "nope.tif"], "Error: --mask: File 'nope.tif' does not exist"),
        (["{slide}", "--mask", "{slide}"], "Error: {slide}: expected a segcls label mask"),
        (["{slide}", "--mask", "{big_mask}"], "um wide (882 px at 1.7 um/px) but slide small.tif is 450 um"),
        (["{slide}", "--mask", "{mask}", "--geojson", "nope.geojson"], "Error: --geojson: File 'nope.geojson' does"),
    ],
)
def test_errors_at_start_are_one_line(files, args, message):
    result = run(*(a.format(**files) for a in args))
    assert result.exit_code != 0
    assert message.format(**files) in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1


def test_usage_errors(files, tmp_path):
    result = run(files["slide"], "--overwrite")
    assert result.exit_code == 2 and "--overwrite goes with --export" in result.output
    result = run(tmp_path, "--export", tmp_path / "x")
    assert result.exit_code != 0


def test_a_slide_that_cannot_be_opened_is_one_error(tmp_path):
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\0" + b"\0" * 100)
    result = run(broken)
    assert result.exit_code != 0 and result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.output.startswith("segcls-view 0.")


def test_export_writes_a_folder_that_opens_from_disk(files, tmp_path):
    target = tmp_path / "shared"
    result = run(files["slide"], "--mask", files["mask"], "--geojson", files["geojson"], "-o", target, "-q")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"-> {target / 'index.html'}")
    page = (target / "index.html").read_text()
    assert 'src="static/openseadragon/openseadragon.min.js"' in page and "slide_files/{level}" in page
    assert (target / "static" / "openseadragon" / "LICENSE.txt").is_file()
    assert (target / "outlines.js").read_text().startswith("window.SEGCLS_GEOJSON = {")
    # 900 x 600 px: Deep Zoom levels 0..10, 4 x 3 tiles at the top one
    assert sorted(int(p.name) for p in (target / "slide_files").iterdir()) == list(range(11))
    assert len(list((target / "slide_files" / "10").iterdir())) == 12
    assert len(list((target / "mask_files" / "10").iterdir())) == 12
    tiles = sum(1 for _ in (target / "slide_files").rglob("*.jpeg"))
    assert f"{2 * tiles} tiles" in result.output

    again = run(files["slide"], "--mask", files["mask"], "--export", target)
    assert again.exit_code == 2 and f"Error: {target} exists: --overwrite replaces it" in again.output
    (target / "marker").write_text("old")
    assert run(files["slide"], "--mask", files["mask"], "--export", target, "--overwrite", "-q").exit_code == 0
    assert not (target / "marker").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]  # no temporary folders left


def test_export_leaves_nothing_when_it_fails(files, tmp_path):
    result = run(files["slide"], "--mask", files["mask"], "--export", tmp_path / "no" / "such" / "dir")
    assert result.exit_code != 0 and "parent does not exist" in result.output
    assert list(tmp_path.iterdir()) == []


def test_the_command_serves_warns_off_this_machine_and_stops_on_sigterm(files):
    """`segcls-view` as users run it (its own process), on a loopback address that is not 127.0.0.1."""
    command = [sys.executable, "-c", "from segcls.runtime.view.cli import main; main()", str(files["slide"]),
               "--mask", str(files["mask"]), "--host", "127.0.0.2", "--port", "0"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        warning = process.stderr.readline()
        line = process.stdout.readline()
        assert warning.startswith("Warning: listening on 127.0.0.2: anyone who can reach this machine")
        assert line.startswith("Serving 1 slide on http://127.0.0.2:") and line.rstrip().endswith("(Ctrl-C to stop)")
        url = line.split(" on ")[1].split()[0]
        with urllib.request.urlopen(url, timeout=20) as response:  # follows the redirect to the viewer page
            assert response.status == 200 and b"small.tif" in response.read()
    finally:
        os.kill(process.pid, signal.SIGTERM)
        code = process.wait(20)
    assert code == 143
