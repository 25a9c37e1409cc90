#!/usr/bin/env bash
# GPU check (< 8 min), for a CUDA machine: the gpu-marked tests with this machine's CUDA torch (a gpu
# test that skips is a failure here, SEGCLS_REQUIRE_GPU=1), then bench/gpu_check.py: per backend that
# runs (torch CUDA fp32 + fp16 always; ONNX Runtime CUDA and TensorRT where installed) label agreement
# with CPU fp32, tiles/s at batch 1/8/32 for 1024 px tiles, e2e on a 20480 px synthetic slide vs
# backend-only and read-only. Writes OUT_DIR/gpu-check.{json,md} and gpu-tests.xml; prints a summary.
#
#   bash bench/gpu_check.sh OUT_DIR
#   env: PYTHON (python3); GPU_CHECK_ARGS (extra bench/gpu_check.py options); WHEELS (.whl): wheels for a machine without a registry (bench/gpu_wheels.sh),
#        installed --no-index into a private folder on PYTHONPATH, nothing else touched
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
WORK=$(mktemp -d -t segcls-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
status=0

if [[ -d "$WHEELS" ]]; then
    echo "== installing the carried wheels from $WHEELS"
    # --no-deps into a target folder: the wheel list is complete for that machine (bench/gpu_wheels.sh)
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$WORK/site" "$WHEELS"/*.whl || status=1
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    echo "segcls wheel built from $(cat "$WHEELS/segcls-source.txt" 2>/dev/null || echo 'an unknown tree'); this tree: $(git describe --always --dirty 2>/dev/null || echo unknown)"
fi
# -P: the repository root is not on sys.path, so `segcls` is the installed package, not ./segcls
PY=("$PYTHON" -P)

echo "== machine"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: no GPU"
"${PY[@]}" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())'
REQUIRE=0
nvidia-smi -L >/dev/null 2>&1 && REQUIRE=1

echo "== gpu tests (SEGCLS_REQUIRE_GPU=$REQUIRE)"
SEGCLS_REQUIRE_GPU=$REQUIRE timeout 240 "${PY[@]}" -m pytest -q -m gpu -rs -p no:cacheprovider \
    --junitxml "$OUT/gpu-tests.xml" tests/test_gpu_torch_backend.py tests/test_backends.py \
    tests/test_export_tensorrt.py tests/test_train_gpu.py 2>&1 | tail -25
tests_status=${PIPESTATUS[0]}
[[ $tests_status -eq 0 ]] || status=1

echo "== backends, agreement, throughput, e2e"
# shellcheck disable=SC2086  # GPU_CHECK_ARGS: extra options, e.g. toy sizes to test this script on a CPU
timeout 420 "${PY[@]}" -m segcls.bench.gpu_check "$OUT" --junit "$OUT/gpu-tests.xml" ${GPU_CHECK_ARGS:-} | tee "$WORK/summary.txt"
bench_status=${PIPESTATUS[0]}
[[ $bench_status -eq 0 ]] || status=1

echo
echo "== summary"
echo "gpu tests: exit $tests_status; measurements: exit $bench_status"
cat "$WORK/summary.txt" 2>/dev/null
echo "results: $OUT/gpu-check.json $OUT/gpu-check.md $OUT/gpu-tests.xml"
exit $status
