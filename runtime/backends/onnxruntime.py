"""ONNX Runtime: an exported .onnx on the CUDA execution provider when it really runs, else the CPU.

onnxruntime-gpu silently falls back to the CPU when CUDA libraries are missing (NOTES.md), so the
provider in use is read back from the session, never assumed from `get_available_providers()`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segcls.errors import BackendUnavailableError, ModelError
from segcls.runtime.backends.base import Backend, BackendOutput
from segcls.runtime.model_info import INPUT_NAME, OUTPUT_NAMES, ModelInfo, read_model_info

_PREFERRED = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            "onnxruntime is not installed: pip install onnxruntime (or 'segcls[gpu]')"
        ) from None
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.providers = providers
        self.threads = threads
        self.session = None
        self.info: ModelInfo | None = None

    def load(self) -> None:
        ort = _import_ort()
        self.info = read_model_info(self.path)  # refuses files without segcls metadata before ORT parses
        available = ort.get_available_providers()
        providers = self.providers or [p for p in _PREFERRED if p in available]
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3  # fallbacks are reported through `device`, not ORT's log
        # Memory patterns pay off for fixed shapes only; here (CPU, batch 4 x 1024^2) they grew the
        # process from 513 MB to 909 MB for no speed gain.
        options.enable_mem_pattern = False
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # ORT raises its own exception types for unreadable models
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ModelError(f"{self.path} is not a loadable ONNX model: {first}") from None
        self.description = self.info.description
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name for o in self.session.get_outputs()}
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= outputs:
            raise ModelError(
                f"{self.path} does not follow the segcls graph contract: expected input '{INPUT_NAME}' and "
                f"outputs {', '.join(OUTPUT_NAMES)}, found inputs {inputs} and outputs {sorted(outputs)}"
            )

    def infer(self, batch: np.ndarray) -> BackendOutput:
        feed = {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.uint8)}
        labels, probs, scores = self.session.run(list(OUTPUT_NAMES), feed)
        return BackendOutput(labels, probs, scores)

    @property
    def device(self) -> str:
        return self.session.get_providers()[0] if self.session is not None else "not loaded"

    def close(self) -> None:
        self.session = None
        self.description = None  # closed = not loaded: entering a `with` block loads it again
