"""segcls-bench view runs end to end at a tiny size: the real segcls-view process, both layers, both phases."""

from __future__ import annotations

import json

from click.testing import CliRunner

from segcls.bench.cli import main


def test_bench_view_writes_json_and_markdown(tmp_path):
    out = tmp_path / "view.json"
    args = ["view", "--synthetic-size", "1024", "--no-cmu", "--requests", "4", "--clients", "1,2",
            "--work", str(tmp_path / "work"), "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rows = data["results"]
    assert {(r["layer"], r["phase"], r["clients"]) for r in rows} == {
        (layer, phase, n) for layer in ("slide", "mask") for phase in ("cold", "warm") for n in (1, 2)
    }
    assert all(r["tiles"] == 4 and 0 < r["p50_ms"] <= r["p99_ms"] and r["tiles_per_s"] > 0 for r in rows)
    assert data["environment"]["machine"]["isa"] is not None and "openslide-python" in data["environment"]["versions"]
    text = out.with_suffix(".md").read_text()
    assert "| synthetic-1024 | 1024 x 1024 | mask | warm | 2 |" in text and "Target (warm slide tile p50" in text
