#!/usr/bin/env bash
# The figures of docs/openvino.md ("Targets"): a short training run on the built-in synthetic data, its FP32
# and INT8 exports, the dense synthetic slide, then per tile and whole slide ONNX Runtime against OpenVINO
# (FP32, BF16, INT8), each comparison in one run with alternating rounds. Timings are only worth recording on
# a quiet machine (load average < 1.5 before it starts; nothing else running):
#
#     bash bench/openvino_targets.sh [WORK_DIR]        # WORK_DIR default: openvino_targets (not committed)
#
# Environment: EPOCHS (default 8; see docs/openvino.md for why not 3), NAME (results prefix, default
# cpu-2core-openvino), ROUNDS (whole-slide rounds, default 3). Writes bench/results/$NAME-*.{json,md}. The
# training, exports and slide are made once and reused by a rerun; the benchmarks run every time.
set -euo pipefail
OUT=${1:-openvino_targets}
EPOCHS=${EPOCHS:-8}
NAME=${NAME:-cpu-2core-openvino}
ROUNDS=${ROUNDS:-3}
RESULTS=$(dirname "$0")/results
mkdir -p "$OUT"
start=$(date +%s)

echo "== model: S+C, $EPOCHS epochs, on the synthetic dataset; FP32 and INT8 exports"
[ -f "$OUT/ds/dataset.json" ] || segcls-synth dataset -o "$OUT/ds" --seed 0
[ -f "$OUT/run/best.pt" ] || OMP_NUM_THREADS=1 segcls-train "$OUT/ds" -o "$OUT/run" --setting S+C \
    --seg-fraction 1.0 --epochs "$EPOCHS" --device cpu -q
[ -f "$OUT/model.onnx" ] || segcls-export "$OUT/run/best.pt" -o "$OUT/model.onnx"
[ -f "$OUT/model.int8.onnx" ] || segcls-export "$OUT/run/best.pt" -o "$OUT/model.int8.onnx" --int8 \
    --calibrate "$OUT/ds" 2>&1 | tee "$OUT/int8-export.log"

echo "== the dense synthetic slide (~85 % tissue), read at 1.0 um/px: an 8192 x 6144 frame"
[ -f "$OUT/dense.tif" ] || segcls-synth slide -o "$OUT/dense.tif" --width 16384 --height 12288 --mpp 0.5 --seed 1

echo "== load average before the benchmarks: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== per tile: 1024 px, 2 threads, 5 alternating rounds; labels vs ONNX Runtime FP32 on the slide's tissue tiles"
segcls-bench latency "$OUT/model.onnx" "$OUT/model.int8.onnx" "$OUT/model.onnx@openvino" \
    "$OUT/model.onnx@openvino:bf16" "$OUT/model.int8.onnx@openvino" --tile 1024 --batch 1,4 --threads 2 \
    --rounds 5 --runs 2 --slide "$OUT/dense.tif" --mpp 1.0 -o "$RESULTS/$NAME-latency.json"

echo "== whole slide, INT8: segcls defaults (--backend auto) and each backend named, vs the plain FP32 loop"
segcls-bench slide "$OUT/dense.tif" --model "$OUT/model.int8.onnx" --model "$OUT/model.int8.onnx@onnxruntime" \
    --model "$OUT/model.int8.onnx@openvino" --baseline-model "$OUT/model.onnx" --mpp 1.0 --rounds "$ROUNDS" \
    --methods plain -o "$RESULTS/$NAME-slide-dense-int8.json"

echo "== whole slide, FP32 and BF16, vs the plain FP32 loop"
segcls-bench slide "$OUT/dense.tif" --model "$OUT/model.onnx" --model "$OUT/model.onnx@onnxruntime" \
    --model "$OUT/model.onnx@openvino" --model "$OUT/model.onnx@openvino:bf16" --mpp 1.0 --rounds "$ROUNDS" \
    --methods plain -o "$RESULTS/$NAME-slide-dense-fp32-bf16.json"

echo "== done in $(( $(date +%s) - start )) s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"
ls "$RESULTS/$NAME"-*
