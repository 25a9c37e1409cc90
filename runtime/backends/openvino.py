"""OpenVINO on the CPU: the exported .onnx (FP32, FP16 or INT8 QDQ) as it is, or an FP32 model in BF16.

Why a second CPU runtime: on cores with AVX-512, VNNI and AVX512-BF16, OpenVINO's CPU plugin runs the
INT8 QDQ file that `segcls-export --int8` writes on VNNI kernels end to end, and an FP32 model in BF16
(`INFERENCE_PRECISION_HINT`, no calibration), where ONNX Runtime's CPU kernels leave much of that silicon
unused (docs/openvino.md). OpenVINO reads the ONNX file directly: the uint8 NHWC input and the in-graph
normalisation, softmax and argmax run as exported.

- Compiled once per model, precision and stream layout; OpenVINO's model cache
  (`CACHE_DIR`, `~/.cache/segcls/openvino/`) keeps the compiled blob, so a later load skips compilation.
  The input stays dynamic (any batch, H, W): on these cores a 1024 px tile ran as fast on the dynamic
  compiled model as on one reshaped to that static shape, so trimmed tiles need no compilation per shape.
- Streams play the part of ONNX Runtime's sessions (`cores.cpu_sessions`): `streams` streams share
  `threads` threads (`NUM_STREAMS`, `INFERENCE_NUM_THREADS`) and run different tiles side by side, each
  tile on its own asynchronous infer request; `infer_stream` keeps one request per stream busy while the
  pipeline stitches, and returns outputs in order.
- Precision: the model's own, or BF16 (`precision="bf16"`, `backends/precision.py` refuses it on a CPU
  without native BF16). FP32 parts of a model always run in FP32 (`INFERENCE_PRECISION_HINT=f32`), also on
  CPUs (AMX) where OpenVINO would otherwise pick BF16 by itself.
"""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from segcls.core.cpu import cpu_info
from segcls.core.errors import BackendUnavailableError, ModelError, SegclsError
from segcls.core.model_info import INPUT_NAME, OUTPUT_NAMES, ModelInfo, read_model_info
from segcls.runtime.backends.base import Backend, BackendOutput
from segcls.runtime.backends.precision import OPENVINO_HINTS, run_precision
from segcls.runtime.cores import available_cores


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError("openvino is not installed: pip install 'segcls[openvino]'") from None
    return openvino


@functools.lru_cache(maxsize=1)
def shared_core():
    """One `openvino.Core` for the process, kept to its end.

    Each Core loads its own CPU plugin, and the plugin gives the thread that creates it an alternate signal
    stack (for AMX state), restoring the one it found when it is destroyed. Two Cores destroyed in the
    order they were made leave the thread on a stack already unmapped, and the next signal handled there
    (a Ctrl-C, a SIGTERM) crashes the process: seen with an FP32 and a BF16 backend closed in turn."""
    return import_openvino().Core()


def default_cache() -> Path:
    from segcls.core.engine import cache_root  # torch-free; the engine cache lives there too

    return cache_root() / "openvino"


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        streams: int = 1,
        precision: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        """`threads`: CPU threads in all (default: every available core), shared by `streams` streams that
        run tiles side by side. `precision`: None (as exported), "fp32" or "bf16". `cache_dir`: OpenVINO's
        compiled-model cache (default `~/.cache/segcls/openvino`)."""
        super().__init__()
        if streams < 1:
            raise SegclsError(f"OpenVINO streams must be >= 1, got {streams}")
        self.path = Path(path)
        self.threads = threads
        self.streams = streams
        self.requested_precision = precision
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.info: ModelInfo | None = None
        self.compiled = None
        self._idle: deque = deque()  # infer requests not running
        self._ports: list = []  # the compiled model's outputs, in OUTPUT_NAMES order

    def load(self) -> None:
        import_openvino()  # one line naming the extra where it is missing
        info = read_model_info(self.path)  # refuses files without segcls metadata before OpenVINO parses
        if info.is_engine:
            raise ModelError(f"{self.path} is a TensorRT engine; OpenVINO runs the exported .onnx")
        precision = run_precision(self.name, self.path, info.precision, self.requested_precision, cpu_info())
        threads = max(self.threads or available_cores(), self.streams)
        cache = self.cache_dir or default_cache()
        cache.mkdir(parents=True, exist_ok=True)
        core = shared_core()
        config = {
            "CACHE_DIR": str(cache),
            "INFERENCE_PRECISION_HINT": OPENVINO_HINTS.get(precision, "f32"),  # INT8/FP16 files: the rest in FP32
            "NUM_STREAMS": str(self.streams),
            "INFERENCE_NUM_THREADS": str(threads),
        }
        try:  # from the path, so that a cached blob is loaded without parsing the ONNX file
            compiled = core.compile_model(str(self.path), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError (and its own types) for unreadable models
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ModelError(f"{self.path} is not a model OpenVINO can compile: {first}") from None
        inputs = [i.get_any_name() for i in compiled.inputs]
        outputs = {o.get_any_name(): o for o in compiled.outputs}
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= set(outputs):
            raise ModelError(
                f"{self.path} does not follow the segcls graph contract: expected input '{INPUT_NAME}' and "
                f"outputs {', '.join(OUTPUT_NAMES)}, found inputs {inputs} and outputs {sorted(outputs)}"
            )
        self._ports = [outputs[name] for name in OUTPUT_NAMES]
        requests = max(self.streams, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._idle = deque(compiled.create_infer_request() for _ in range(requests))
        self.compiled, self.info, self.precision = compiled, info, precision
        self.threads = threads
        self.description = info.description

    def infer(self, batch: np.ndarray) -> BackendOutput:
        (output,) = list(self.infer_stream([batch]))
        return output

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[BackendOutput]:
        """Every tile an asynchronous request, up to one per stream running at once; up to streams + 1
        batches in flight, outputs in order. The input is shared with the request, not copied (the feed
        keeps a batch intact until its outputs are back); when the stream stops early, running requests
        are cancelled and awaited, so none reads a batch buffer after the pipeline takes it back."""
        if self.compiled is None:
            raise SegclsError("the OpenVINO backend is not loaded: call load() first")
        running: deque[_Tile] = deque()  # started, oldest first
        pending: deque[list] = deque()  # per batch in flight: its tiles' outputs, None until collected
        try:
            for batch in batches:
                feed = np.ascontiguousarray(batch, dtype=np.uint8)
                outputs: list = [None] * len(feed)
                pending.append(outputs)
                for i in range(len(feed)):
                    if not self._idle:
                        self._collect(running.popleft())
                    request = self._idle.popleft()
                    tile = feed[i : i + 1]
                    try:
                        request.start_async({0: tile}, share_inputs=True)
                    except BaseException:
                        self._idle.append(request)
                        raise
                    running.append(_Tile(request, tile, outputs, i))
                while len(pending) > self.streams:
                    yield self._gathered(pending.popleft(), running)
            while pending:
                yield self._gathered(pending.popleft(), running)
        finally:
            for t in running:
                t.request.cancel()
            for t in running:
                with contextlib.suppress(Exception):  # a cancelled request's own error: the stream ends anyway
                    t.request.wait()
                self._idle.append(t.request)

    def _collect(self, tile: _Tile) -> None:
        """Wait for the oldest running tile and copy its outputs out of the request, which is idle again."""
        try:
            tile.request.wait()
            tile.outputs[tile.index] = [tile.request.get_tensor(port).data.copy() for port in self._ports]
        finally:
            self._idle.append(tile.request)

    def _gathered(self, outputs: list, running: deque[_Tile]) -> BackendOutput:
        """The oldest batch's outputs once all its tiles have ended (they are the oldest running ones)."""
        while any(o is None for o in outputs):
            self._collect(running.popleft())
        return BackendOutput(*(np.concatenate(parts) for parts in zip(*outputs, strict=True)))

    @property
    def device(self) -> str:
        if self.compiled is None:
            return "not loaded"
        streams = f"{self.streams} stream{'s' if self.streams > 1 else ''}"
        return f"CPU ({cpu_info().model}, {streams} of {self.threads} threads)"

    def close(self) -> None:
        self._idle = deque()
        self._ports = []
        self.compiled = None
        self.description = None  # closed = not loaded: entering a `with` block loads it again


class _Tile:
    """One tile on one request: the input it shares (kept alive while the request runs) and where its
    outputs go."""

    __slots__ = ("index", "outputs", "request", "tile")

    def __init__(self, request, tile: np.ndarray, outputs: list, index: int) -> None:
        self.request, self.tile, self.outputs, self.index = request, tile, outputs, index
