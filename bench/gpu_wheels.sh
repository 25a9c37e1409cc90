#!/usr/bin/env bash
# Wheels for a GPU machine without a package registry (Python 3.12, x86_64, glibc >= 2.28), into .whl/
# (git-ignored; carried with the working tree). That machine has torch (CUDA), numpy, Pillow, scipy,
# cuda-bindings, onnxruntime (CPU); these are what the runtime, the tests and bench/gpu_check.sh add.
#
#   bash bench/gpu_wheels.sh [DEST]      (default .whl; env PYTHON, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$DEST"
rm -f "$DEST"/segcls-*.whl
# --no-deps: the list is complete for that machine; with deps pip would also fetch numpy, sympy, ...
"$PYTHON" -m pip download --quiet --dest "$DEST" --no-deps --only-binary=:all: --implementation cp \
    --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    openslide-bin openslide-python imagecodecs simplejpeg tifffile click tqdm \
    pytest pluggy iniconfig pygments packaging pytest-timeout \
    onnx onnxscript onnx-ir ml_dtypes protobuf typing_extensions
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$DEST" .  # segcls itself, this tree
# the segcls wheel is a snapshot: rebuild it after every change; gpu_check.sh prints which tree it is
git describe --always --dirty > "$DEST/segcls-source.txt" 2>/dev/null || echo unknown > "$DEST/segcls-source.txt"
du -sh "$DEST"
ls "$DEST"
