"""INT8 calibration settings against what they cost: agreement, F1 delta and speed, one FP32 model.

    python bench/int8_sweep.py model.onnx DATASET --config minmax:64:decoder.classifier --config entropy:64:

Each --config is METHOD:TILES:FP32_MODULES (modules comma-separated, empty for none; append `:rr` for
reduce_range). For each, the FP32 ONNX model is quantized as `segcls-export --int8` does
(`quantize.quantize_onnx`), verified as it does (`verify.verify_int8`: held-out val tiles, test-split
macro F1), and timed against the FP32 model at --tile px, alternating in one process
(`latency.measure_latency`). Writes NAME.json and NAME.md in the working directory.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from segcls.bench.latency import LatencyOptions, measure_latency
from segcls.data.folder import load_pair, open_dataset
from segcls.export.quantize import Int8Options, quantize_onnx, sample_tiles
from segcls.export.verify import verify_int8


def parse_config(text: str) -> Int8Options:
    method, tiles, modules, *flags = text.split(":")
    kept = tuple(m for m in modules.split(",") if m)
    return Int8Options(method, int(tiles), fp32_modules=kept, reduce_range="rr" in flags)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="FP32 ONNX model (segcls-export)")
    p.add_argument("dataset", type=Path)
    p.add_argument("--config", action="append", required=True, help="METHOD:TILES:FP32_MODULES[:rr]")
    p.add_argument("--tile", type=int, default=1024, help="tile side for the speed ratio")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--name", default="int8-sweep", help="results file stem, in the working directory")
    args = p.parse_args()

    ds = open_dataset(args.dataset)
    test = [load_pair(ds, name) for name in ds.split["test"]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(args.config):
            options = parse_config(text)
            calibration = sample_tiles(ds, ds.split["train"], options.tiles, options.tile_size, options.seed)
            held_out = sample_tiles(ds, ds.split["val"], options.verify_tiles, options.tile_size, options.seed + 1)
            int8 = Path(tmp) / f"int8-{i}.onnx"
            quantize_onnx(args.model, int8, calibration, options, progress=False)
            report = verify_int8(int8, args.model, held_out, test, ds.num_classes)
            speed = measure_latency(
                [args.model, int8], LatencyOptions(batches=(1,), tiles=(args.tile,), rounds=args.rounds, runs=1,
                                                   memory=False), progress=False,
            )["results"][1]["speedup_vs_first"]  # fmt: skip
            figures = {f.name: f.value for f in report.figures} | report.info
            rows.append({"config": text, "method": options.method, "tiles": options.tiles,
                         "fp32_modules": list(options.fp32_modules), "reduce_range": options.reduce_range,
                         "passed": report.passed, "figures": figures, "speedup_vs_fp32": speed})  # fmt: skip
            print(f"{text}: {report.summary()}; speed {speed}", flush=True)
    Path(f"{args.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        f"`python bench/int8_sweep.py {args.model.name} DATASET --tile {args.tile} ...`",
        "",
        "| method | tiles | FP32 modules | reduce_range | agreement | test F1 fp32 | F1 int8 - fp32 | speed vs FP32 "
        "(median, min-max) | passes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, s = r["figures"], r["speedup_vs_fp32"]
        lines.append(
            f"| {r['method']} | {r['tiles']} | {', '.join(r['fp32_modules']) or 'none'} | {r['reduce_range']} "
            f"| {f['labels agreement (held-out tiles)']:.4f} | {f['test macro F1 fp32']:.4f} "
            f"| {f['test macro F1 int8'] - f['test macro F1 fp32']:+.4f} | {s['median']}x ({s['min']}-{s['max']}) "
            f"| {'yes' if r['passed'] else 'no'} |"
        )
    Path(f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
