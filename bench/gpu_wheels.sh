#!/usr/bin/env bash
# Wheels for the GPU machine (no package registry; Python 3.12, x86_64, glibc >= 2.28), into DEST (.whl,
# git-ignored, carried with the working tree: <= 64 MiB with it). Only what that machine lacks: it has
# torch (CUDA), numpy, Pillow, scipy, tifffile, click, tqdm, pytest, onnx, onnxruntime (CPU) and
# cuda-python (../shared/NOTES.md). segcls itself is not a wheel: gpu_check.sh imports this tree.
# DEST is emptied first: two versions of one package stop `pip install`. Versions: requirements-cpu.txt's.
#
#   bash bench/gpu_wheels.sh [DEST]      (default .whl; env PYTHON, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PYTHON=${PYTHON:-.venv/bin/python}
LIMIT_MIB=40  # the rest of the 64 MiB is the working tree's
PACKAGES=(openslide-bin openslide-python imagecodecs simplejpeg pytest-timeout)

pins=()
for package in "${PACKAGES[@]}"; do
    pin=$(grep -E "^${package}==" requirements-cpu.txt | cut -d' ' -f1 || true)
    pins+=("${pin:-$package}")
done
mkdir -p "$DEST"
rm -f "$DEST"/*.whl "$DEST"/segcls-source.txt
# --no-deps: the list is complete for that machine; with deps pip would also fetch numpy, sympy, ...
"$PYTHON" -m pip download --quiet --dest "$DEST" --no-deps --only-binary=:all: --implementation cp \
    --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "${pins[@]}"
ls -la "$DEST"
size=$(du -sm "$DEST" | cut -f1)
echo "$DEST: ${size} MiB (${pins[*]})"
if (( size > LIMIT_MIB )); then
    echo "more than $LIMIT_MIB MiB: the working tree and the wheels must travel in 64 MiB" >&2
    exit 1
fi
