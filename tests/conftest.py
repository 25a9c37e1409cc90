"""With SEGCLS_REQUIRE_GPU=1 (bench/gpu_check.sh sets it on a machine with a GPU), a `gpu` test that
skips is a failure: a CPU torch or a missing CUDA library must not pass as "all GPU tests green".

With SEGCLS_REQUIRE_BROWSER=1 (.ci/run sets it after installing Chromium), a `browser` test that skips is a
failure: CI must not pass the viewer's browser tests by not running them.

A skip stays a skip only where an optional GPU library is verifiably absent: TensorRT for tests marked
`tensorrt`, ONNX Runtime's CUDA provider for the ONNX Runtime tests.
"""

from __future__ import annotations

import importlib.util
import os

import pytest


def _allowed_skip(item) -> str | None:
    """Why this gpu test may skip here, or None."""
    if item.get_closest_marker("tensorrt") and importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    if "onnxruntime" in item.name:
        try:
            import onnxruntime
        except ImportError:
            return "onnxruntime is not installed"
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "onnxruntime has no CUDA provider"
    return None


def _fail_the_skip(report, what: str, variable: str) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"{what} test skipped on a machine that must run it ({variable}=1): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    if os.environ.get("SEGCLS_REQUIRE_BROWSER") == "1" and item.get_closest_marker("browser"):
        _fail_the_skip(report, "browser", "SEGCLS_REQUIRE_BROWSER")
    elif os.environ.get("SEGCLS_REQUIRE_GPU") == "1" and item.get_closest_marker("gpu") and _allowed_skip(item) is None:
        _fail_the_skip(report, "gpu", "SEGCLS_REQUIRE_GPU")


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """What segcls keeps under ~/.cache/segcls (TensorRT engines, OpenVINO's compiled models, the backend
    `--backend auto` measured) goes to a folder of this test session, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield
