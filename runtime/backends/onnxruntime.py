"""ONNX Runtime: an exported .onnx on the CUDA execution provider when it really runs, else the CPU.

onnxruntime-gpu silently falls back to the CPU when CUDA libraries are missing (NOTES.md), so the
provider in use is read back from the session, never assumed from `get_available_providers()`: a GPU
provider asked for by name and not running is refused; in "auto" the fallback is warned about and
`device` names the provider that runs.

On a GPU provider the batch goes in through IO binding and the outputs stay on the device: labels and
class scores are copied back every batch, probs only when read (`LazyArray`). The TensorRT provider
builds FP16 engines and keeps them, and its timing cache, in `~/.cache/segcls/ort-tensorrt/`. Both search
per input shape (cuDNN's EXHAUSTIVE algorithm search, an engine build), so on a GPU provider a batch
smaller than the largest so far (the last of a slide) is padded up to it: one input shape per run.

On the CPU provider `sessions=N` opens N sessions of threads / N threads each and runs different tiles
on them side by side. One session's threads meet at a barrier after every operator, so a reader or the
mask writer that takes one core for a moment stalls all of them; N sessions stall only that one. On
2 cores beside the slide pipeline's readers and mask writer, 2 sessions of 1 thread ran a dense slide
1.06x (FP32) and 1.21x (INT8) faster than 1 session of 2 threads, in less memory (one tile per run:
453 MB against 659 MB peak RSS) (bench/results/cpu-2core-avx512-slide-dense-*.md).
"""

from __future__ import annotations

import queue
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from segcls.core.errors import BackendUnavailableError, ModelError, SegclsError
from segcls.core.model_info import INPUT_NAME, OUTPUT_NAMES, ModelInfo, disabled_optimizers, read_model_info
from segcls.runtime.backends.base import Backend, BackendOutput
from segcls.runtime.backends.lazy import LazyArray
from segcls.runtime.cores import available_cores

_PREFERRED = ("CUDAExecutionProvider", "CPUExecutionProvider")  # "auto": TensorRT's first build takes minutes
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def provider_options(name: str, device_id: int = 0, cache: Path | None = None) -> dict[str, str]:
    """Options for one execution provider (names from onnxruntime.ai/docs/execution-providers/)."""
    if name == "CUDAExecutionProvider":
        # One tile size all slide long: search cuDNN's convolution algorithms once, keep the fastest.
        return {"device_id": str(device_id), "cudnn_conv_algo_search": "EXHAUSTIVE"}
    if name == "TensorrtExecutionProvider":
        from segcls.core.engine import cache_root  # torch-free; the engine cache lives there too

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
        sessions: int = 1,
        pad: bool | None = None,
    ) -> None:
        """`io_binding`: None = on a GPU provider only (where it saves copies); True also on the CPU.
        `sessions`: on the CPU provider, that many sessions sharing `threads` run tiles side by side (a
        GPU provider, or IO binding, gets one). `pad`: None = on a GPU provider only: a batch smaller than
        the largest so far of its tile size runs padded up to it (`shapes_run` lists what ran)."""
        super().__init__()
        if sessions < 1:
            raise SegclsError(f"ONNX Runtime sessions must be >= 1, got {sessions}")
        self.sessions = sessions
        self.path = Path(path)
        self.providers = providers
        self.device_id = device_id
        self.fallback: str | None = None  # the GPU provider that was listed but did not load
        self.io_binding = io_binding
        self._output_device: str | None = None  # where IO binding leaves the outputs; None = no binding
        self.threads = threads
        self.pad = pad
        self._pad = False  # decided by load(): pad on a GPU provider
        self._largest: tuple[int, ...] | None = None  # the largest batch shape run so far (when padding)
        self.shapes_run: set[tuple[int, ...]] = set()  # input shapes the session ran
        self.session = None  # the first session; GPU providers and single calls of one tile run on it
        self._pool: ThreadPoolExecutor | None = None  # one thread per session, when there are several
        self._idle: queue.SimpleQueue = queue.SimpleQueue()  # sessions not running a tile
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
                "pip install 'segcls[gpu-cu12]' (see docs/gpu.md)"
            )
        providers = [(p, provider_options(p, self.device_id)) for p in names]
        for _, opts in providers:  # the TensorRT EP writes its engine and timing caches there
            if "trt_engine_cache_path" in opts:
                Path(opts["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        several = self.sessions > 1 and self.io_binding is not True
        threads = max(1, (self.threads or available_cores()) // self.sessions) if several else self.threads
        self.session = self._open_session(ort, providers, names, threads)
        self._check_providers(names)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name for o in self.session.get_outputs()}
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= outputs:
            raise ModelError(
                f"{self.path} does not follow the segcls graph contract: expected input '{INPUT_NAME}' and "
                f"outputs {', '.join(OUTPUT_NAMES)}, found inputs {inputs} and outputs {sorted(outputs)}"
            )
        on_gpu = self.session.get_providers()[0] in GPU_PROVIDERS
        self._pad = on_gpu if self.pad is None else self.pad
        if self.io_binding is not False and (on_gpu or self.io_binding):
            self._output_device = "cuda" if on_gpu else "cpu"
        if several and not on_gpu:
            self._idle = queue.SimpleQueue()
            self._idle.put(self.session)
            for _ in range(self.sessions - 1):
                self._idle.put(self._open_session(ort, providers, names, threads))
            self._pool = ThreadPoolExecutor(self.sessions, thread_name_prefix="segcls-ort")
        self.precision = self.info.precision
        self.description = self.info.description

    def _open_session(self, ort, providers: list, names: list[str], threads: int | None):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # fallbacks are reported through `device`, not ORT's log
        # Memory patterns pay off for fixed shapes only; here (CPU, batch 4 x 1024^2) they grew the
        # process from 513 MB to 909 MB for no speed gain.
        options.enable_mem_pattern = False
        try:
            extra = {"disabled_optimizers": d} if (d := disabled_optimizers(self.info.precision, names)) else {}
            return ort.InferenceSession(str(self.path), options, providers=providers, **extra)
        except Exception as e:  # ORT raises its own exception types for unreadable models
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ModelError(f"{self.path} is not a loadable ONNX model: {first}") from None

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
                f"not matching; the session would run on {running[0]}); see docs/gpu.md"
            )
        self.fallback = wanted
        warnings.warn(f"ONNX Runtime could not start {wanted}; running on {running[0]}", RuntimeWarning, stacklevel=3)

    def infer(self, batch: np.ndarray) -> BackendOutput:
        feed = np.ascontiguousarray(batch, dtype=np.uint8)
        if self._pool is not None and len(feed) > 1 and self._output_device is None:
            return _gathered(self._submit(feed))
        n, feed = len(feed), self._padded(feed)
        self.shapes_run.add(feed.shape)
        if self._output_device is not None:
            return self._infer_bound(feed, n)
        return BackendOutput(*(out[:n] for out in self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: feed})))

    def _padded(self, batch: np.ndarray) -> np.ndarray:
        """`batch`, or with blank tiles after it up to the largest batch so far of its tile size (padding)."""
        if not self._pad:
            return batch
        largest = self._largest
        if largest is None or largest[1:] != batch.shape[1:] or largest[0] < len(batch):
            self._largest = batch.shape
            return batch
        if len(batch) == largest[0]:
            return batch
        return np.concatenate([batch, np.zeros((largest[0] - len(batch), *batch.shape[1:]), np.uint8)])

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[BackendOutput]:
        """With several sessions: every tile is a task for the next idle session, and up to sessions + 1
        batches are in flight, so no session waits while a batch of one tile or the pipeline's stitching
        finishes; outputs come back in order. Tasks still queued when the stream stops are cancelled and
        the running ones awaited, so no session reads a batch buffer after the pipeline takes it back."""
        if self._pool is None:
            yield from super().infer_stream(batches)
            return
        pending: deque[list[Future]] = deque()
        try:
            for batch in batches:
                pending.append(self._submit(np.ascontiguousarray(batch, dtype=np.uint8)))
                if len(pending) > self.sessions:
                    yield _gathered(pending.popleft())
            while pending:
                yield _gathered(pending.popleft())
        finally:
            futures = [f for tiles in pending for f in tiles]
            for f in futures:
                f.cancel()
            wait(futures)

    def _submit(self, batch: np.ndarray) -> list[Future]:
        return [self._pool.submit(self._run_on_idle, batch[i : i + 1]) for i in range(len(batch))]

    def _run_on_idle(self, tile: np.ndarray) -> list[np.ndarray]:
        session = self._idle.get()  # the pool has a thread per session: one is always idle here
        self.shapes_run.add(tile.shape)
        try:
            return session.run(list(OUTPUT_NAMES), {INPUT_NAME: tile})
        finally:
            self._idle.put(session)

    def _infer_bound(self, batch: np.ndarray, n: int) -> BackendOutput:
        """IO binding: the input copied in by ORT, the outputs allocated on the device and left there; the
        first `n` tiles' outputs are returned (the others are padding)."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, batch)
        for name in OUTPUT_NAMES:
            binding.bind_output(name, self._output_device, self.device_id)
        self.session.run_with_iobinding(binding)
        labels, probs, scores = binding.get_outputs()  # OrtValues, in the order bound
        lazy_probs = LazyArray(lambda: probs.numpy()[:n], (n, *probs.shape()[1:]))
        return BackendOutput(labels.numpy()[:n], lazy_probs, scores.numpy()[:n])

    @property
    def device(self) -> str:
        if self.session is None:
            return "not loaded"
        return self.session.get_providers()[0]

    @property
    def on_cpu(self) -> bool:
        return self.session is None or self.session.get_providers()[0] == "CPUExecutionProvider"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._idle = queue.SimpleQueue()
        self.session = None
        self.description = None  # closed = not loaded: entering a `with` block loads it again


def _gathered(tiles: list[Future]) -> BackendOutput:
    """One batch's outputs from the tasks of its tiles, in tile order; all of them have ended before an
    error of any is raised, so none still reads the batch."""
    wait(tiles)
    outputs = [f.result() for f in tiles]
    return BackendOutput(*(np.concatenate(parts) for parts in zip(*outputs, strict=True)))
