"""Test doubles of the `tensorrt` and `cuda.bindings.runtime` Python APIs, enough to run segcls's engine
build and TensorRT backend on a CPU.

`fake_tensorrt(style)` builds a module shaped like TensorRT 10 (STRONGLY_TYPED and a deprecated
EXPLICIT_BATCH network flag, `BuilderFlag.FP16`) or TensorRT 11 (no EXPLICIT_BATCH, no
`BuilderFlag.FP16`, STRONGLY_TYPED kept but ignored). Like the real builder of 10.x it refuses
`BuilderFlag.FP16` on a strongly typed network. The "engine" it serialises records the ONNX model's I/O
and the profile; executing it computes `reference_outputs` from the input in fake device memory.

`fake_cudart()` keeps "device" and page-locked buffers in numpy arrays whose addresses are real pointers,
so `cudaMemcpyAsync` is a checked `ctypes.memmove` (out of bounds, or from pageable memory, fails the
test), queued on its stream and run only when the host waits for it.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types

import numpy as np

ENGINE_MAGIC = b"FAKETRT1"


def reference_outputs(image: np.ndarray, num_classes: int, probs_dtype=np.float32):
    """What the fake engine computes: per-8x8-block channel means as logits; a checkable stand-in."""
    b, h, w, _ = image.shape
    blocks = image.reshape(b, h // 8, 8, w // 8, 8, 3).mean(axis=(2, 4)) / 255.0  # (B, h, w, 3)
    logits = np.stack([blocks[..., c % 3] + 0.01 * c for c in range(num_classes)], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True)).astype(probs_dtype)
    return logits.argmax(axis=1).astype(np.uint8), probs, logits.max(axis=(2, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- CUDA


def fake_cudart(capability: tuple[int, int] = (8, 9), name: str = "Fake GPU", devices: int = 1):
    """A `cuda.bindings.runtime` double whose streams really are asynchronous.

    Work queued on a stream (copies, event records, waits, engine runs through `rt.enqueue`) runs only
    when the host waits for it (`cudaEventSynchronize`, `cudaStreamSynchronize`) or when another
    stream's `cudaStreamWaitEvent` needs it. So a backend that reads a host buffer before waiting, or
    refills one whose upload has not run yet, computes wrong outputs and fails its test. `rt.calls` logs
    every call in the order the host made it, for tests of what overlaps what.
    """
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorInvalidValue": 1,
                                                  "cudaErrorNoDevice": 100})  # fmt: skip
    rt.cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})
    rt.cudaHostAllocDefault = 0
    rt.cudaEventDefault, rt.cudaEventBlockingSync, rt.cudaEventDisableTiming = 0, 1, 2  # cuda-python's values
    ok = rt.cudaError_t.cudaSuccess
    rt.memory = {}  # device address -> backing uint8 array
    rt.host = {}  # page-locked host address -> backing uint8 array
    rt.streams = {}  # stream handle -> queue of (label, work) not run yet
    rt.events = {}  # event handle -> [stream it was last recorded on, times recorded, times completed]
    rt.event_flags = {}  # event handle -> the flags it was created with
    rt.calls = []  # (call, *handles) in host order
    rt.ran = []  # labels of queued work in the order it ran
    handles = iter(range(1000, 10**6))

    def within(memory, addr: int, nbytes: int) -> bool:
        return any(base <= addr and addr + nbytes <= base + arr.nbytes for base, arr in memory.items())

    def enqueue(stream, label: str, work) -> None:
        assert int(stream) in rt.streams, f"{label} on an unknown stream"
        rt.streams[int(stream)].append((label, work))

    def run(stream: int, until=None) -> None:
        """Run `stream`'s queued work in order, until `until()` holds (all of it when None)."""
        queue = rt.streams[stream]
        while queue and not (until and until()):
            label, work = queue.pop(0)
            work()
            rt.ran.append(label)

    def cudaMalloc(nbytes):
        arr = np.zeros(int(nbytes), np.uint8)
        rt.memory[arr.ctypes.data] = arr
        return ok, arr.ctypes.data

    def cudaHostAlloc(nbytes, flags):
        arr = np.zeros(int(nbytes), np.uint8)
        rt.host[arr.ctypes.data] = arr
        return ok, arr.ctypes.data

    def cudaMemcpyAsync(dst, src, nbytes, kind, stream):
        h2d = kind == rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        device, host = (dst, src) if h2d else (src, dst)
        if not within(rt.memory, device, nbytes):
            raise AssertionError(f"copy of {nbytes} bytes at {device:#x} is outside every device allocation")
        assert within(rt.host, host, nbytes), "asynchronous copy from/to pageable host memory"
        label = "H2D" if h2d else "D2H"
        rt.calls.append((label, int(stream)))
        enqueue(stream, label, lambda: ctypes.memmove(dst, src, nbytes))
        return (ok,)

    def cudaStreamCreate():
        stream = next(handles)
        rt.streams[stream] = []
        return ok, stream

    def cudaEventCreateWithFlags(flags):
        event = next(handles)
        rt.events[event], rt.event_flags[event] = [None, 0, 0], int(flags)
        return ok, event

    def cudaEventRecord(event, stream):
        state = rt.events[int(event)]
        state[0], state[1] = int(stream), state[1] + 1
        rt.calls.append(("record", int(event), int(stream)))
        target = state[1]
        enqueue(stream, "record", lambda: state.__setitem__(2, max(state[2], target)))
        return (ok,)

    def complete(event: int, target: int) -> None:
        state = rt.events[event]
        if state[0] is not None:
            run(state[0], until=lambda: state[2] >= target)
        assert state[2] >= target, "waited for an event that can never complete"

    def cudaEventSynchronize(event):
        rt.calls.append(("sync", int(event)))
        complete(int(event), rt.events[int(event)][1])
        return (ok,)

    def cudaStreamWaitEvent(stream, event, flags):
        target = rt.events[int(event)][1]
        rt.calls.append(("wait", int(stream), int(event)))
        enqueue(stream, "wait", lambda: complete(int(event), target))
        return (ok,)

    def cudaStreamSynchronize(stream):
        run(int(stream))
        return (ok,)

    def cudaStreamDestroy(stream):
        assert not rt.streams[int(stream)], "stream destroyed with work still queued"
        del rt.streams[int(stream)]
        return (ok,)

    if devices == 0:
        rt.cudaGetDeviceCount = lambda: (rt.cudaError_t.cudaErrorNoDevice, 0)
    else:
        rt.cudaGetDeviceCount = lambda: (ok, devices)
    rt.cudaSetDevice = lambda index: (ok,)
    props = types.SimpleNamespace(name=name.encode() + b"\0\0", major=capability[0], minor=capability[1])
    rt.cudaGetDeviceProperties = lambda index: (ok, props)
    rt.cudaMalloc, rt.cudaHostAlloc, rt.cudaMemcpyAsync = cudaMalloc, cudaHostAlloc, cudaMemcpyAsync
    rt.cudaFree = lambda addr: (ok, rt.memory.pop(addr))[:1]
    rt.cudaFreeHost = lambda addr: (ok, rt.host.pop(addr))[:1]
    rt.cudaStreamCreate, rt.cudaStreamSynchronize, rt.cudaStreamDestroy = (
        cudaStreamCreate, cudaStreamSynchronize, cudaStreamDestroy)  # fmt: skip
    rt.cudaEventCreate = lambda: cudaEventCreateWithFlags(rt.cudaEventDefault)
    rt.cudaEventCreateWithFlags, rt.cudaEventRecord, rt.cudaEventSynchronize = (
        cudaEventCreateWithFlags, cudaEventRecord, cudaEventSynchronize)  # fmt: skip
    rt.cudaEventDestroy = lambda event: (ok, rt.events.pop(int(event)))[:1]
    rt.cudaStreamWaitEvent = cudaStreamWaitEvent
    rt.enqueue = enqueue
    return rt


def device_array(rt, addr: int, dtype, shape) -> np.ndarray:
    """View of fake device memory at `addr`."""
    count = int(np.prod(shape))
    for base, arr in rt.memory.items():
        if base <= addr and addr + count * np.dtype(dtype).itemsize <= base + arr.nbytes:
            return arr[addr - base :].view(np.uint8)[: count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)
    raise AssertionError(f"tensor of shape {shape} at {addr:#x} does not fit a device allocation")


# ----------------------------------------------------------------------------------------- TensorRT


def fake_tensorrt(style: int = 10, version: str | None = None, cudart=None):
    """A `tensorrt` module double in the style of TensorRT `style` (10 or 11)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version or {10: "10.3.0", 11: "11.0.0"}[style]
    trt.built = []  # (network flags, builder flags, workspace, profile) per build, for tests
    trt.released_in_flight = []  # execution contexts released while a run of theirs was still queued
    if style == 10:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum("NDCF", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
        trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "TF32": 7})
    else:
        trt.NetworkDefinitionCreationFlag = enum.IntEnum("NDCF", {"STRONGLY_TYPED": 0})
        trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"TF32": 7})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT32": 3, "UINT8": 5, "INT64": 8})
    numpy_types = {0: np.float32, 1: np.float16, 3: np.int32, 5: np.uint8, 8: np.int64}
    trt.nptype = lambda dt: numpy_types[int(dt)]
    onnx_types = {1: trt.DataType.FLOAT, 10: trt.DataType.HALF, 2: trt.DataType.UINT8, 7: trt.DataType.INT64}

    class Logger:
        WARNING = 2

        def __init__(self, severity=2):
            self.severity = severity

    class Network:
        def __init__(self, flags):
            self.flags, self.io = flags, []

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            import onnx

            try:
                model = onnx.load(path, load_external_data=False)
            except Exception as e:
                self.errors.append(f"ModelImporter: failed to parse {path}: {type(e).__name__}")
                return False
            graph = model.graph
            for mode, values in ((trt.TensorIOMode.INPUT, graph.input), (trt.TensorIOMode.OUTPUT, graph.output)):
                for v in values:
                    dims = [d.dim_value or -1 for d in v.type.tensor_type.shape.dim]
                    self.network.io.append((v.name, int(mode), int(onnx_types[v.type.tensor_type.elem_type]), dims))
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    def current_device() -> bytes:
        rt = cudart or sys.modules["cuda.bindings.runtime"]
        return bytes(rt.cudaGetDeviceProperties(0)[1].name).split(b"\0")[0]

    class TimingCache:
        """Serialised as FAKECACHE:<device name>:<builds>; an empty one belongs to the current device."""

        def __init__(self, data: bytes):
            if data and not data.startswith(b"FAKECACHE:"):
                raise RuntimeError("invalid timing cache")
            _, device, builds = data.split(b":") if data else (b"", current_device(), b"0")
            self.device, self.builds = device, int(builds)

        def serialize(self):
            return b"FAKECACHE:%s:%d" % (self.device, self.builds)

    class Config:
        def __init__(self):
            self.flags, self.pools, self.profiles, self.cache = set(), {}, [], None

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            """Like TensorRT: a cache from a device with other properties is refused (False) unless
            `ignore_mismatch`, and then the config has no cache (`get_timing_cache()` is None)."""
            if cache.device != current_device() and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            strongly = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") and network.flags & (
                1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            )
            if strongly and getattr(trt.BuilderFlag, "FP16", None) in config.flags:
                return None  # 10.x: precision flags are not allowed on strongly typed networks
            if len(config.profiles) != 1 or not network.io:
                return None
            if config.cache is not None:
                config.cache.builds += 1
            profile = config.profiles[0].shapes
            trt.built.append((network.flags, set(config.flags), dict(config.pools), profile))
            payload = {"version": trt.__version__, "io": network.io, "profile": profile}
            return ENGINE_MAGIC + json.dumps(payload).encode()

    class Engine:
        def __init__(self, payload):
            self.io = {name: (mode, dtype, dims) for name, mode, dtype, dims in payload["io"]}
            self.names = [name for name, *_ in payload["io"]]
            self.profile = payload["profile"]
            self.num_io_tensors = len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode(self.io[name][0])

        def get_tensor_dtype(self, name):
            return trt.DataType(self.io[name][1])

        def get_tensor_profile_shape(self, name, index):
            return self.profile[name]

        def create_execution_context(self):
            return Context(self)

    class Context:
        """Released (garbage collected, as TensorRT's Python objects are) with a run still queued on a
        stream is recorded in `trt.released_in_flight`: `enqueueV3`'s documentation makes that undefined."""

        def __init__(self, engine):
            self.engine, self.shape, self.addresses = engine, None, {}
            self.num_classes = engine.io["class_scores"][2][1]
            self.queued = [0]  # runs queued and not run yet (a list: the queued work counts down in it)

        def __del__(self):
            if self.queued[0]:
                trt.released_in_flight.append(self.queued[0])

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.profile[name]
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                raise AssertionError(f"input shape {tuple(shape)} outside the profile {lo}..{hi}")
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            b, h, w, _ = self.shape
            return {"image": self.shape, "labels": (b, h // 8, w // 8), "probs": (b, self.num_classes, h // 8, w // 8),
                    "class_scores": (b, self.num_classes)}[name]  # fmt: skip

        def set_tensor_address(self, name, address):
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle):
            """Queues the run on the stream, with the shape and addresses set now (as TensorRT does)."""
            assert isinstance(stream_handle, int)
            rt = cudart or sys.modules["cuda.bindings.runtime"]
            shape, addresses, classes, queued = self.shape, dict(self.addresses), self.num_classes, self.queued
            dtype = {n: trt.nptype(self.engine.get_tensor_dtype(n)) for n in self.engine.names}

            def run():  # holds no reference to the context, so releasing it while queued is seen
                image = device_array(rt, addresses["image"], np.uint8, shape)
                results = reference_outputs(image, classes, dtype["probs"])
                for name, value in zip(("labels", "probs", "class_scores"), results, strict=True):
                    device_array(rt, addresses[name], dtype[name], value.shape)[...] = value
                queued[0] -= 1

            queued[0] += 1

            rt.calls.append(("exec", stream_handle))
            rt.enqueue(stream_handle, "exec", run)
            return True

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            if not data.startswith(ENGINE_MAGIC):
                return None
            payload = json.loads(data[len(ENGINE_MAGIC) :])
            if payload["version"] != trt.__version__:
                return None  # real TensorRT: "serialization assertion ... version mismatch"
            return Engine(payload)

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt


def install(monkeypatch, trt=None, cudart=None) -> None:
    """Put the doubles where `import tensorrt` and `from cuda.bindings import runtime` find them."""
    if trt is not None:
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
    if cudart is not None:
        cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        cuda.bindings, bindings.runtime = bindings, cudart
        monkeypatch.setitem(sys.modules, "cuda", cuda)
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
