"""bench/gpu_check.py's measuring code, run for real on the CPU at toy sizes (the numbers mean nothing
here; that the report has its keys and its figures are consistent does)."""

from __future__ import annotations

import json

import pytest

from segcls.bench.gpu_check import run_check, summary


@pytest.mark.slow  # ~20 s of CPU, more wall time on a shared machine
def test_gpu_check_runs_on_cpu_and_reports(tmp_path):
    report = run_check(
        tmp_path / "out", device="cpu", tile=64, batches=(1, 2), slide_px=128, e2e_batch=4, workers=1,
        seconds=0.05, agreement_tiles=2,
    )  # fmt: skip
    saved = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert saved["backends"].keys() == report["backends"].keys() == {"torch cpu fp32", "torch cpu fp16"}
    assert {"machine", "versions", "settings", "read_only", "slide", "skipped", "command"} <= saved.keys()
    fp32 = saved["backends"]["torch cpu fp32"]
    assert fp32["agreement_vs_cpu_fp32"]["labels_agreement"] == 1.0  # the reference itself
    assert saved["backends"]["torch cpu fp16"]["agreement_vs_cpu_fp32"]["labels_agreement"] >= 0.99
    assert [t["batch"] for t in fp32["throughput"]] == [1, 2] and all(t["tiles_per_s"] > 0 for t in fp32["throughput"])
    e2e = fp32["e2e"]
    assert e2e["tiles"] == saved["slide"]["tiles"] == saved["read_only"]["tiles"] > 0
    bound = min(e2e["backend_only_tiles_per_s"], e2e["read_only_tiles_per_s"])
    assert abs(e2e["e2e_over_min"] - e2e["tiles_per_s"] / bound) < 0.01
    assert e2e["target_met"] == (e2e["tiles_per_s"] >= 0.8 * bound)
    md = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "| torch cpu fp16 | cpu (fp16) |" in md and "tiles/s b2" in md
    assert "torch cpu fp32" in summary(report)
