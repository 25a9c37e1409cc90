"""On a machine without a GPU, every `gpu` test skips before its fixtures run: a skip decided in the test
body comes after fixtures such as an ONNX export (20-40 s), which on the GPU machine costs device time
and, with SEGCLS_REQUIRE_GPU=1, turns an export hiccup into a GPU-suite failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
GPU_FILES = sorted(p.name for p in TESTS.glob("test_*.py") if "pytest.mark.gpu" in p.read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skips of a machine without a CUDA GPU")
def test_gpu_tests_skip_before_any_fixture():
    assert {"test_backends.py", "test_gpu_torch_backend.py", "test_train_gpu.py"} <= set(GPU_FILES)
    env = {k: v for k, v in os.environ.items() if k != "SEGCLS_REQUIRE_GPU"}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "--setup-show", "-q", "-p", "no:cacheprovider", *GPU_FILES]
    result = subprocess.run(cmd, cwd=TESTS, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " skipped" in result.stdout and " passed" not in result.stdout
    setups = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("SETUP")]
    assert setups == [], "gpu tests set up fixtures before skipping:\n" + "\n".join(setups)
