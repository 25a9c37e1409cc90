"""SEGCLS_REQUIRE_GPU=1 turns a skipped `gpu` test into a failure (tests/conftest.py)."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CASES = textwrap.dedent(
    """
    import pytest

    @pytest.mark.gpu
    def test_needs_cuda():
        pytest.skip("no CUDA GPU visible to torch")

    @pytest.mark.gpu
    @pytest.mark.skipif(True, reason="no CUDA GPU visible to torch")
    def test_skipif_needs_cuda():
        pass

    @pytest.mark.gpu
    @pytest.mark.tensorrt
    def test_needs_tensorrt():
        pytest.skip("TensorRT is not installed")

    def test_cpu_skip():
        pytest.skip("not a gpu test")
    """
)


@pytest.fixture
def suite(pytester):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    gpu: g\n    tensorrt: t\n")
    pytester.makepyfile(test_cases=CASES)
    return pytester


def test_skips_stay_skips_by_default(suite, monkeypatch):
    monkeypatch.delenv("SEGCLS_REQUIRE_GPU", raising=False)
    suite.runpytest("-p", "no:cacheprovider").assert_outcomes(skipped=4)


def test_required_gpu_turns_gpu_skips_into_failures(suite, monkeypatch):
    monkeypatch.setenv("SEGCLS_REQUIRE_GPU", "1")
    result = suite.runpytest("-p", "no:cacheprovider")
    tensorrt_absent = importlib.util.find_spec("tensorrt") is None
    # a skip in setup (skipif) is reported as an error, one in the test body as a failure: both fail the run
    result.assert_outcomes(failed=1 + (not tensorrt_absent), errors=1, skipped=1 + tensorrt_absent)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*gpu test skipped on a machine that must run it*no CUDA GPU visible*"])
