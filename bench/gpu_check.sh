#!/usr/bin/env bash
# The GPU check in one call: under 7 minutes on the GPU machine (../shared/NOTES.md: one 10-minute call,
# Python 3.12, CUDA torch, no registry) by construction:
#   the carried wheels installed    <= INSTALL_S
#   bench/gpu_check.py              <= CHECK_S: its steps' budgets (gpu_check.BUDGET_S), each step stopped
#                                      at its own; then KILL_S more before `timeout` kills it
# gpu_check.py rewrites OUT_DIR/gpu-check.{json,md} after every step, so a call cut short still brings back
# each step that finished. segcls is imported from this working tree itself (a folder of links with the
# package layout of pyproject.toml), never from a wheel built earlier.
#
#   bash bench/gpu_check.sh OUT_DIR
#   env: PYTHON (python3); WHEELS (.whl): wheels from bench/gpu_wheels.sh, installed --no-index into a private
#        folder on PYTHONPATH, nothing else touched; GPU_CHECK_ARGS: extra gpu_check.py options, e.g.
#        "--device cpu --toy" to run every step on a CPU (that proves the script runs, nothing about a GPU);
#        GPU_CHECK_SCALE (1, an integer): multiplies every budget (a slow CPU running the toy sizes)
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SCALE=${GPU_CHECK_SCALE:-1}
INSTALL_S=30
CHECK_S=370
KILL_S=10
WORK=$(mktemp -d -t segcls-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$WORK/src/segcls"
for entry in segcls/*; do ln -s "$PWD/$entry" "$WORK/src/segcls/"; done
for sub in export runtime bench; do ln -s "$PWD/$sub" "$WORK/src/segcls/$sub"; done
export PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}"

wheels="none carried"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "== installing the carried wheels from $WHEELS (at most $INSTALL_S s)"
    # --no-deps into a target folder: the wheel list is complete for that machine (bench/gpu_wheels.sh)
    if timeout "$INSTALL_S" "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$WORK/site" "$WHEELS"/*.whl; then
        wheels="installed: $(cd "$WHEELS" && ls -- *.whl | tr '\n' ' ')"
    else
        wheels="install FAILED (exit $?)"
    fi
    export PYTHONPATH="$WORK/site:$PYTHONPATH"
    echo "wheels $wheels"
fi

# -P: the repository root is not on sys.path, so `segcls` is the tree linked above, not ./segcls alone
# shellcheck disable=SC2086  # GPU_CHECK_ARGS: extra options
timeout -k "$KILL_S" "$(( CHECK_S * SCALE ))" "$PYTHON" -P -m segcls.bench.gpu_check "$OUT" \
    --budget-scale "$SCALE" --note "wheels=$wheels" ${GPU_CHECK_ARGS:-}
status=$?
[[ $status -eq 124 || $status -eq 137 ]] && echo "gpu_check.py stopped at its limit of $(( CHECK_S * SCALE )) s"
exit $status
