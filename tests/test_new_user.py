"""What a new user tripped on (issue 11): a runtime-only install, `-o` an existing folder, a truncated TIFF."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _runtime_models import save_checkpoint, tissue_image
from click.testing import CliRunner
from PIL import Image

from segcls.runtime.cli import main as infer
from segcls.runtime.outputs import plan_outputs

BLOCKER = """
import os, sys

BLOCKED = set(os.environ["SEGCLS_TEST_BLOCK"].split(","))


class Block:
    # Behaves like an install without these packages: importing them raises ModuleNotFoundError.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Block())
"""


def entry_point(tmp_path: Path, command: str, args: list[str], block: str = "") -> subprocess.CompletedProcess:
    """Run an installed console script (its `main`, as the script does) in a fresh interpreter in which
    importing the comma-separated modules `block` fails."""
    module = {
        "segcls-train": "segcls.cli.train",
        "segcls-eval": "segcls.cli.evaluate",
        "segcls-sweep": "segcls.cli.sweep",
        "segcls-export": "segcls.export.cli",
        "segcls-infer": "segcls.runtime.cli",
        "segcls-prepare": "segcls.cli.prepare",
    }[command]
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    env = {**os.environ, "PYTHONPATH": str(hook), "SEGCLS_TEST_BLOCK": block or "-"}
    code = f"import sys; sys.argv[0] = {command!r}; from {module} import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )


@pytest.mark.parametrize(
    ("command", "args", "block", "message"),
    [
        ("segcls-train", ["ds", "-o", "run"], "torch", "torch is not installed: pip install 'segcls[train]'"),
        ("segcls-eval", ["best.pt", "ds"], "torch", "torch is not installed: pip install 'segcls[train]'"),
        ("segcls-sweep", ["ds", "-o", "sw"], "torch", "torch is not installed: pip install 'segcls[train]'"),
        ("segcls-export", ["best.pt", "-o", "m.onnx"], "torch", "torch is not installed: pip install 'segcls[export]'"),
        ("segcls-export", ["best.pt", "-o", "m.onnx"], "onnx", "onnx is not installed: pip install 'segcls[export]'"),
        ("segcls-prepare", ["qupath", "s.tif", "-o", "ds", "-a", "."], "shapely", "pip install 'segcls[prepare]'"),
    ],
)
def test_a_missing_extra_is_one_line_and_exit_2(tmp_path, command, args, block, message):
    if command == "segcls-prepare":
        Image.new("RGB", (8, 8)).save(tmp_path / "s.tif")
    (tmp_path / "ds").mkdir()  # the inputs exist: they are checked first
    (tmp_path / "best.pt").write_bytes(b"")
    r = entry_point(tmp_path, command, args, block)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "ModuleNotFoundError" not in r.stderr
    assert r.stderr.strip() == f"Error: {message}" or r.stderr.strip().endswith(message), r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_the_blocker_really_blocks(tmp_path):
    """The test above is worth something only if the hook hides torch (and help still works without it)."""
    r = entry_point(tmp_path, "segcls-train", ["--help"], "torch")
    assert r.returncode == 0 and "DATASET" in r.stdout
    code = "import torch"
    hook = tmp_path / "hook"
    env = {**os.environ, "PYTHONPATH": str(hook), "SEGCLS_TEST_BLOCK": "torch"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr


def test_an_existing_folder_as_output_gets_the_mask_inside(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    slide = Path("slides/A01.svs")
    plan = plan_outputs(slide, out, False, {"geojson": "-", "overlay": str(out), "summary": None})
    assert plan == {
        "mask": out / "A01.mask.tif",
        "geojson": out / "A01.geojson",
        "overlay": out / "A01.overlay.png",
    }
    assert plan_outputs(slide, tmp_path / "m.tif", False, {})["mask"] == tmp_path / "m.tif"


def test_infer_into_an_existing_folder_runs(tmp_path):
    slide = tmp_path / "small.png"
    Image.fromarray(tissue_image(128, 160, seed=2)).save(slide)
    model = save_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out"
    out.mkdir()
    args = [str(slide), "-o", str(out), "--model", str(model), "--backend", "torch", "--level", "0"]
    args += ["--tile", "128", "--overlap", "16", "-q"]
    r = CliRunner().invoke(infer, args)
    assert r.exit_code == 0, r.output
    assert "done already" not in r.output and (out / "small.mask.tif").is_file()
    r = CliRunner().invoke(infer, args)  # now it is done
    assert r.exit_code == 0 and "done already" in r.output


def test_a_truncated_tiff_prints_only_segcls_error(tmp_path):
    """In a real console (a subprocess: pytest would capture the log records itself)."""
    from segcls.core.tiff import write_pyramid

    pixels = tissue_image(512, 512, seed=1)
    full = tmp_path / "full.tif"
    write_pyramid(full, (512, 512), lambda lv, x, y, w, h: pixels[y : y + h, x : x + w], samples=3, tile=128)
    data = full.read_bytes()
    broken = []
    for fraction in (0.5, 0.9):  # tiles missing; the last IFDs missing
        broken.append(tmp_path / f"cut{int(fraction * 100)}.tif")
        broken[-1].write_bytes(data[: int(len(data) * fraction)])
    model = save_checkpoint(tmp_path / "model.pt")
    args = [*map(str, broken), "-o", str(tmp_path / "out"), "--model", str(model), "--backend", "torch"]
    r = entry_point(tmp_path, "segcls-infer", [*args, "--slide-mpp", "1", "-q"])
    assert r.returncode == 1, r.stderr  # several slides: each failure reported, exit 1
    assert "<tifffile" not in r.stderr.replace("(tifffile: <tifffile", ""), r.stderr  # no library log line
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 2 and all(b.name in e for b, e in zip(broken, errors, strict=True)), r.stderr
    assert "Traceback" not in r.stderr and not list((tmp_path / "out").glob("*.tif"))
