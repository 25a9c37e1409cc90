"""ONNX Runtime: an exported .onnx on the CUDA execution provider when it really runs, else the CPU.

onnxruntime-gpu silently falls back to the CPU when CUDA libraries are missing (NOTES.md), so the
provider in use is read back from the session, never assumed from `get_available_providers()`: a GPU
provider asked for by name and not running is refused; in "auto" the fallback is warned about and
`device` names the provider that runs.

On a GPU provider the batch goes in through IO binding and the outputs stay on the device: labels and
class scores are copied back every batch, probs only when read (`LazyArray`). The TensorRT provider
builds FP16 engines and keeps them, and its timing cache, in `~/.cache/segcls/ort-tensorrt/`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from segcls.errors import BackendUnavailableError, ModelError
from segcls.runtime.backends.base import Backend, BackendOutput
from segcls.runtime.backends.lazy import LazyArray
from segcls.runtime.model_info import INPUT_NAME, OUTPUT_NAMES, ModelInfo, read_model_info

_PREFERRED = ("CUDAExecutionProvider", "CPUExecutionProvider")  # "auto": TensorRT's first build takes minutes
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def provider_options(name: str, device_id: int = 0, cache: Path | None = None) -> dict[str, str]:
    """Options for one execution provider (names from onnxruntime.ai/docs/execution-providers/)."""
    if name == "CUDAExecutionProvider":
        # One tile size all slide long: search cuDNN's convolution algorithms once, keep the fastest.
        return {"device_id": str(device_id), "cudnn_conv_algo_search": "EXHAUSTIVE"}
    if name == "TensorrtExecutionProvider":
        from segcls.export.tensorrt import cache_root  # torch-free; the engine cache lives there too

        cache = cache or cache_root() / "ort-tensorrt"
        return {
            "device_id": str(device_id),
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache),
        }
    return {}


def disabled_optimizers(precision: str, providers: list[str]) -> list[str] | None:
    """ONNX Runtime graph optimizers to turn off for this model on these providers.

    INT8 on the CPU: QDQ propagation moves the quantize step after the FP32 stem's MaxPool up before it,
    so the pool runs on uint8 in plain NCHW, ~65 ms per 1024 px tile against ~5 ms in the blocked FP32
    layout (docs/int8.md). Results are the same: max commutes with a monotone quantization.
    """
    if precision == "int8" and providers and providers[0] == "CPUExecutionProvider":
        return ["QDQPropagationTransformer"]
    return None


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

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        threads: int | None = None,
        device_id: int = 0,
        io_binding: bool | None = None,
    ) -> None:
        """`io_binding`: None = on a GPU provider only (where it saves copies); True also on the CPU."""
        super().__init__()
        self.path = Path(path)
        self.providers = providers
        self.device_id = device_id
        self.fallback: str | None = None  # the GPU provider that was listed but did not load
        self.io_binding = io_binding
        self._output_device: str | None = None  # where IO binding leaves the outputs; None = no binding
        self.threads = threads
        self.session = None
        self.info: ModelInfo | None = None

    def load(self) -> None:
        ort = _import_ort()
        self.info = read_model_info(self.path)  # refuses files without segcls metadata before ORT parses
        available = ort.get_available_providers()
        names = self.providers or [p for p in _PREFERRED if p in available]
        missing = [p for p in names if p not in available]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime here has no {', '.join(missing)} (it has {', '.join(available)}): "
                "pip install 'segcls[gpu-cu12]' (see the README's GPU section)"
            )
        providers = [(p, provider_options(p, self.device_id)) for p in names]
        for _, opts in providers:  # the TensorRT EP writes its engine and timing caches there
            if "trt_engine_cache_path" in opts:
                Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3  # fallbacks are reported through `device`, not ORT's log
        # Memory patterns pay off for fixed shapes only; here (CPU, batch 4 x 1024^2) they grew the
        # process from 513 MB to 909 MB for no speed gain.
        options.enable_mem_pattern = False
        try:
            extra = {"disabled_optimizers": d} if (d := disabled_optimizers(self.info.precision, names)) else {}
            self.session = ort.InferenceSession(str(self.path), options, providers=providers, **extra)
        except Exception as e:  # ORT raises its own exception types for unreadable models
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ModelError(f"{self.path} is not a loadable ONNX model: {first}") from None
        self._check_providers(names)
        on_gpu = self.session.get_providers()[0] in GPU_PROVIDERS
        if self.io_binding is not False and (on_gpu or self.io_binding):
            self._output_device = "cuda" if on_gpu else "cpu"
        self.description = self.info.description
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name for o in self.session.get_outputs()}
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= outputs:
            raise ModelError(
                f"{self.path} does not follow the segcls graph contract: expected input '{INPUT_NAME}' and "
                f"outputs {', '.join(OUTPUT_NAMES)}, found inputs {inputs} and outputs {sorted(outputs)}"
            )

    def _check_providers(self, names: list[str]) -> None:
        """ORT drops a provider whose libraries do not load and carries on, on the CPU: read back what runs."""
        running = self.session.get_providers()
        wanted = next((p for p in names if p in GPU_PROVIDERS), None)
        if wanted is None or wanted in running:
            self.fallback = None
            return
        if self.providers:  # asked for by name: running elsewhere would be a silent lie
            self.session = None
            raise BackendUnavailableError(
                f"ONNX Runtime lists {wanted} but could not start it (CUDA/cuDNN/TensorRT libraries missing or "
                f"not matching; the session would run on {running[0]}); see the README's GPU section"
            )
        self.fallback = wanted
        warnings.warn(f"ONNX Runtime could not start {wanted}; running on {running[0]}", RuntimeWarning, stacklevel=3)

    def infer(self, batch: np.ndarray) -> BackendOutput:
        feed = np.ascontiguousarray(batch, dtype=np.uint8)
        if self._output_device is None:
            labels, probs, scores = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: feed})
            return BackendOutput(labels, probs, scores)
        return self._infer_bound(feed)

    def _infer_bound(self, batch: np.ndarray) -> BackendOutput:
        """IO binding: the input copied in by ORT, the outputs allocated on the device and left there."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, batch)
        for name in OUTPUT_NAMES:
            binding.bind_output(name, self._output_device, self.device_id)
        self.session.run_with_iobinding(binding)
        labels, probs, scores = binding.get_outputs()  # OrtValues, in the order bound
        return BackendOutput(labels.numpy(), LazyArray(probs.numpy, tuple(probs.shape())), scores.numpy())

    @property
    def device(self) -> str:
        if self.session is None:
            return "not loaded"
        return self.session.get_providers()[0]

    def close(self) -> None:
        self.session = None
        self.description = None  # closed = not loaded: entering a `with` block loads it again
