"""`segcls-bench latency`: the report's keys and the markdown table (behaviour, not numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _runtime_models import exported_onnx, save_checkpoint
from click.testing import CliRunner

from segcls.bench.cli import main
from segcls.bench.latency import LatencyOptions, measure_latency, peak_rss_mb

CMU = Path(__file__).parent / "data" / "cmu-1-small-region.svs"
TINY = dict(batches=(1, 2), tiles=(32,), threads=1, warmup=1, rounds=2, runs=1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return exported_onnx(tmp_path_factory)


def test_report_keys_per_model_and_config(model, tmp_path):
    checkpoint = save_checkpoint(tmp_path / "m.pt")  # torch eager beside ONNX Runtime
    report = measure_latency([model, checkpoint], LatencyOptions(**TINY, memory=False), progress=False)
    assert {"command", "machine", "versions", "threads", "warmup", "rounds", "runs_per_round", "results"} <= set(report)
    assert report["threads"] == 1 and {"cpu", "cores"} <= set(report["machine"])
    rows = report["results"]
    assert [(r["backend"], r["batch"]) for r in rows] == [
        ("onnxruntime", 1), ("torch", 1), ("onnxruntime", 2), ("torch", 2)
    ]  # fmt: skip
    for r in rows:
        assert {"model", "precision", "device", "tile", "calls", "tiles_per_s", "mpix_per_s", "peak_rss_mb"} <= set(r)
        assert set(r["latency_ms"]) == {"p50", "p90", "p99", "mean"}
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
        assert r["calls"] == 2 and r["precision"] == "fp32" and r["tiles_per_s"] > 0
        assert set(r["speedup_vs_first"]) == {"median", "min", "max"}
    assert rows[0]["speedup_vs_first"] == {"median": 1.0, "min": 1.0, "max": 1.0}  # the first model vs itself


def test_cli_writes_json_and_markdown_with_peak_rss(model, tmp_path):
    out = tmp_path / "lat.json"
    args = ["latency", str(model), "--batch", "1", "--tile", "32", "--threads", "2", "--sessions", "2",
            "--warmup", "0", "--rounds", "1", "--runs", "1", "-o", str(out)]  # fmt: skip
    ballast = np.ones(400 * 2**20, np.uint8)  # this process's peak is now >= 400 MB; a fresh one's is not
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert len(report["results"]) == 1
    assert 0 < report["results"][0]["peak_rss_mb"] < peak_rss_mb() - 300, "not measured in a process of its own"
    del ballast
    table = out.with_suffix(".md").read_text()
    assert "| model | backend | precision |" in table and "Machine:" in table and "Versions:" in table
    assert "Command:" in table and "threads 2 in 2 session(s)" in table and model.name in table
    assert report["sessions"] == 2


@pytest.mark.parametrize(
    "args, message",
    [(["--tile", "30"], "multiple of 16"), (["--batch", "a,b"], "comma-separated integers")],
)
def test_cli_bad_input_is_one_error_line(model, args, message):
    result = CliRunner().invoke(main, ["latency", str(model), "--no-memory", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_missing_model_is_one_error_line(tmp_path):
    result = CliRunner().invoke(main, ["latency", str(tmp_path / "nope.onnx"), "--no-memory"])
    assert result.exit_code == 2 and "model not found" in result.output and len(result.output.splitlines()) == 1


def test_model_at_backend_and_precision_runs_beside_the_first_with_labels_agreement(model, tmp_path):
    """MODEL@openvino(:bf16) rows beside ONNX Runtime's, on real texture (tiles of a slide with tissue)."""
    pytest.importorskip("openvino")
    from segcls.core.cpu import cpu_info

    runs = [str(model), f"{model}@openvino"] + ([f"{model}@openvino:bf16"] if cpu_info().bf16 else [])
    out = tmp_path / "lat.json"
    args = ["latency", *runs, "--batch", "2", "--tile", "128", "--threads", "2", "--warmup", "0", "--rounds", "1",
            "--runs", "1", "--no-memory", "--slide", str(CMU), "--mpp", "2.0", "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["backend"], r["precision"]) for r in rows] == [("onnxruntime", "fp32"), ("openvino", "fp32")] + (
        [("openvino", "bf16")] if len(runs) == 3 else []
    )
    assert [r["run"] for r in rows] == runs and rows[0]["labels_agree_with_first"] == 1.0
    assert rows[1]["labels_agree_with_first"] >= 0.999  # FP32 on another runtime: the same labels
    assert report["input"] == "the first tiles with tissue of cmu-1-small-region.svs at 2.0 um/px"
    assert isinstance(report["machine"]["isa"], list)  # the instruction sets the kernels depend on
    table = out.with_suffix(".md").read_text()
    assert "| labels = first |" in table and f"{model.name}@openvino |" in table


def test_a_model_spec_with_an_unknown_backend_is_one_error_line(model):
    result = CliRunner().invoke(main, ["latency", f"{model}@tvm", "--no-memory"])
    assert result.exit_code == 2 and "--backend must be one of" in result.output
