#!/usr/bin/env bash
# GPU smoke check (< 5 min): export FP16 ONNX, build a TensorRT engine if TensorRT is present, compare
# TensorRT with ONNX Runtime, run the GPU-marked tests, print a summary. Parts that cannot run here are
# reported as SKIPPED with the reason, never as passed.
#
#   bash bench/gpu_check.sh [CHECKPOINT]     (default: a randomly initialised 4-class model)
#   env: TILE (512), MAX_BATCH (8), PYTHON (python)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TILE=${TILE:-512}
MAX_BATCH=${MAX_BATCH:-8}
WORK=$(mktemp -d -t segcls-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
declare -a SUMMARY=()
note() { SUMMARY+=("$(printf '%-24s %s' "$1" "$2")"); echo "== $1: $2"; }

echo "== machine"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
    note "GPU" "$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader | head -1)"
else
    note "GPU" "none (nvidia-smi not found)"
fi
TRT_VERSION=$($PYTHON -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null) || TRT_VERSION=""
note "TensorRT" "${TRT_VERSION:-not installed}"
$PYTHON -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'

CKPT=${1:-}
if [[ -z "$CKPT" ]]; then
    CKPT="$WORK/model.pt"
    $PYTHON - "$CKPT" <<'EOF'
import sys, torch
from segcls.checkpoint import save_checkpoint
from segcls.description import ModelDescription
from segcls.model import build_model
torch.manual_seed(0)
save_checkpoint(sys.argv[1], build_model(4), ModelDescription(classes=("a", "b", "c", "d"), mpp=0.5))
EOF
fi

echo "== export (FP16 ONNX$([[ -n "$TRT_VERSION" ]] && echo ' + TensorRT engine'))"
TRT_ARGS=()
[[ -n "$TRT_VERSION" ]] && TRT_ARGS=(--trt --tile "$TILE" --max-batch "$MAX_BATCH" --timing-cache "$WORK/timing.cache")
if timeout 240 segcls-export "$CKPT" -o "$WORK/model.onnx" --fp16 "${TRT_ARGS[@]}"; then
    note "export fp16 onnx" "PASS"
    [[ -n "$TRT_VERSION" ]] && note "build engine" "PASS ($(du -h "$WORK/model.engine" | cut -f1))"
else
    note "export" "FAIL (exit $?)"
fi

if [[ -n "$TRT_VERSION" && -f "$WORK/model.engine" ]]; then
    echo "== TensorRT vs ONNX Runtime"
    if $PYTHON - "$WORK" "$TILE" "$MAX_BATCH" <<'EOF'
import sys, time
import numpy as np, onnxruntime as ort
from segcls.export.verify import tissue_like_images
from segcls.runtime.backends.tensorrt import TensorRTBackend
work, tile, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
images = tissue_like_images(batch, tile, tile, np.random.default_rng(0))
providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
session = ort.InferenceSession(f"{work}/model.onnx", providers=providers)
expected = session.run(None, {"image": images})
with TensorRTBackend(f"{work}/model.engine") as trt:
    got = trt.infer(images)
    start = time.perf_counter()
    for _ in range(10):
        trt.infer(images)
    per_tile = (time.perf_counter() - start) / (10 * batch)
agreement = float((got.labels == expected[0]).mean())
probs = float(np.abs(got.probs.astype(np.float32) - expected[1].astype(np.float32)).max())
scores = float(np.abs(got.class_scores - expected[2]).max())
print(f"{trt.device} vs ORT {session.get_providers()[0]}: labels agreement {agreement:.5f}, "
      f"probs max|diff| {probs:.2e}, class_scores max|diff| {scores:.2e}, "
      f"TensorRT {per_tile * 1e3:.2f} ms per {tile}px tile (batch {batch}, incl. copies)")
sys.exit(0 if agreement >= 0.99 and probs <= 1e-2 else 1)
EOF
    then note "TensorRT vs ORT" "PASS"; else note "TensorRT vs ORT" "FAIL"; fi
else
    note "TensorRT vs ORT" "SKIPPED (TensorRT not installed: pip install 'segcls[gpu]')"
fi

echo "== pytest -m 'gpu or tensorrt'"
timeout 180 $PYTHON -m pytest -q -m "gpu or tensorrt" -rs --continue-on-collection-errors tests/ | tee "$WORK/pytest.log"
status=${PIPESTATUS[0]}
note "gpu tests" "$(tail -1 "$WORK/pytest.log") (exit $status)"

echo
echo "== summary"
printf '%s\n' "${SUMMARY[@]}"
