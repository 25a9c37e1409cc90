"""`--backend auto` on an .onnx: the fastest backend that verifies on this machine, measured once.

Which CPU runtime is faster depends on the model's precision and the CPU: on AVX-512 + VNNI + BF16 cores
OpenVINO ran our INT8 export 1.8x faster than ONNX Runtime and ONNX Runtime ran FP32 1.1x faster than
OpenVINO (docs/openvino.md); an AVX2-only host may order them otherwise. So the choice is measured: every
backend installed here that can run the model at the asked precision is opened with the run's threads and
sessions, checked against ONNX Runtime on the same file (`check.check_backend`; ONNX Runtime at the
exported precision is the reference itself), and timed on a few `tile` x `tile` inputs in rounds that
alternate the backends; the fastest that passed is chosen. The result is kept in
`~/.cache/segcls/backends/`, keyed by the model's sha256, the asked precision, the CPU's model and flags,
the library versions, threads, sessions and tile, so the probe runs once per model and machine, and the
choice (with what was measured) is printed in the run's line and its `--summary`.

Where ONNX Runtime has a GPU provider, "auto" is ONNX Runtime: OpenVINO runs on the CPU here.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from segcls.core.cpu import cpu_info
from segcls.core.errors import BackendUnavailableError, ModelError, SegclsError
from segcls.core.model_info import read_model_info
from segcls.runtime.backends.measured import cache_folder, library_version, measurement_key, read_entry, write_entry
from segcls.runtime.backends.precision import require_bf16, run_precision

PROBE_ROUNDS = 3
PROBE_BATCHES = 2  # batches of `sessions` tiles per backend per round
CANDIDATES = ("onnxruntime", "openvino")  # the backends that run an .onnx on the CPU


@dataclass
class Measured:
    """One candidate backend, as the probe found it."""

    backend: str
    precision: str
    passed: bool  # its labels agree with ONNX Runtime's on the same file (or it is ONNX Runtime itself)
    check: str  # the verification line, or why it could not be opened
    tiles_per_s: float | None = None  # median over the rounds; None when it was not timed


@dataclass
class BackendChoice:
    backend: str
    precision: str
    tile: int
    measured: list[Measured] = field(default_factory=list)  # empty: nothing else could run it
    cached: bool = False  # read from an earlier probe

    def line(self) -> str:
        """One line for the run's output: what was chosen and against what."""
        if not self.measured:
            return f"auto: {self.backend} {self.precision} (the only backend here for this model and precision)"
        chosen = next(m for m in self.measured if m.backend == self.backend)
        others = ", ".join(
            f"{m.backend} {m.tiles_per_s:.2f}" if m.tiles_per_s else f"{m.backend} (failed its check)"
            for m in self.measured
            if m.backend != self.backend
        )
        when = "measured earlier on this machine" if self.cached else "measured now"
        return (
            f"auto: {self.backend} {self.precision}, {chosen.tiles_per_s:.2f} tiles/s of {self.tile} px against "
            f"{others} ({when})"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BackendChoice:
        measured = [Measured(**m) for m in data.get("measured", [])]
        return cls(data["backend"], data["precision"], int(data["tile"]), measured, bool(data.get("cached", False)))


# probe(model, candidates [(backend, precision)], threads, sessions, tile, log) -> [Measured]
Probe = Callable[[Path, list[tuple[str, str]], int, int, int, Callable[[str], None]], list[Measured]]


def candidates(model: Path, precision: str | None, installed: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """(backend, precision it would compute in) for each backend installed here that runs `model` at
    `precision` (None: as exported), ONNX Runtime first."""
    installed = installed if installed is not None else installed_backends()
    exported = read_model_info(model).precision
    found = []
    for name in (n for n in CANDIDATES if n in installed):
        try:
            found.append((name, run_precision(name, model, exported, precision, cpu_info())))
        except SegclsError:
            continue
    return found


def installed_backends() -> tuple[str, ...]:
    """The CPU backends whose libraries are installed, or ("onnxruntime",) alone where ONNX Runtime has a
    GPU provider (that is where "auto" goes)."""
    names = []
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return ("onnxruntime",)
        names.append("onnxruntime")
    except ImportError:
        pass
    if library_version("openvino") is not None:
        names.append("openvino")
    return tuple(names)


def choose_backend(
    model: str | Path,
    precision: str | None = None,
    *,
    threads: int,
    sessions: int,
    tile: int = 1024,
    installed: tuple[str, ...] | None = None,
    cache_dir: str | Path | None = None,
    probe: Probe | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> BackendChoice:
    """The backend `--backend auto` runs `model` on (see the module docstring).

    `installed`: the backends to consider (default: those installed here); `cache_dir`: where choices are
    kept (default `~/.cache/segcls/backends`); `probe`: what measures the candidates (default
    `probe_backends`; tests pass one that returns fixed figures).
    """
    model = Path(model)
    found = candidates(model, precision, installed)
    if not found:  # say why, in the words of what refused
        if precision == "bf16":
            require_bf16(cpu_info())
            raise BackendUnavailableError(
                "--precision bf16 runs on OpenVINO, which is not installed: pip install 'segcls[openvino]'"
            )
        run_precision("onnxruntime", model, read_model_info(model).precision, precision, cpu_info())
        raise BackendUnavailableError("neither onnxruntime nor openvino is installed: pip install onnxruntime")
    if len(found) == 1:
        return BackendChoice(found[0][0], found[0][1], tile)
    key = measurement_key(model, precision=precision, candidates=found, threads=threads, sessions=sessions, tile=tile)
    path = Path(cache_dir or cache_folder("backends")) / f"{key}.json"
    entry = read_entry(path)
    if entry is not None:
        try:
            return replace(BackendChoice.from_dict(entry), cached=True)
        except (KeyError, TypeError, ValueError):
            pass  # measure again
    names = ", ".join(f"{b} {p}" for b, p in found)
    log(f"--backend auto: timing {names} on {model.name} ({tile} px tiles), once for this model and machine")
    measured = (probe or probe_backends)(model, found, threads, sessions, tile, log)
    passed = [m for m in measured if m.passed and m.tiles_per_s]
    if not passed:
        failed = "; ".join(f"{m.backend}: {m.check}" for m in measured)
        raise ModelError(f"no backend runs {model.name} as verified: {failed}")
    best = max(passed, key=lambda m: m.tiles_per_s)
    choice = BackendChoice(best.backend, best.precision, tile, measured)
    write_entry(path, choice.to_dict())
    return choice


def probe_backends(
    model: Path, found: list[tuple[str, str]], threads: int, sessions: int, tile: int, log: Callable[[str], None]
) -> list[Measured]:
    """Open, check and time each candidate (rounds alternate them; median tiles/s), then close them all."""
    from segcls.runtime.backends import open_backend
    from segcls.runtime.backends.check import cached_check

    exported = read_model_info(model).precision
    opened, measured = [], []
    try:
        for name, precision in found:
            try:
                asked = None if precision == exported else precision  # as exported, or what was asked (bf16)
                kwargs = {"precision": asked, "threads": threads, "sessions": sessions}
                backend = open_backend(model, name, check=False, **kwargs)
            except SegclsError as e:
                measured.append(Measured(name, precision, False, str(e)))
                continue
            if name == "onnxruntime" and precision == exported:
                m = Measured(name, precision, True, "the reference (the runtime the export verified)")
            else:
                result = cached_check(backend, model, log=log)
                m = Measured(name, precision, result.passed, result.summary)
            measured.append(m)
            if m.passed:
                opened.append((backend, m))
            else:
                backend.close()
        rng = np.random.default_rng(0)
        batch = rng.integers(0, 256, (sessions, tile, tile, 3), dtype=np.uint8)
        for backend, _ in opened:  # warm-up: allocations, kernel selection, first-shape work
            for _ in backend.infer_stream([batch]):
                pass
        rates: dict[int, list[float]] = {i: [] for i in range(len(opened))}
        for r in range(PROBE_ROUNDS):
            order = list(range(len(opened)))
            for i in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                for _ in opened[i][0].infer_stream([batch] * PROBE_BATCHES):
                    pass
                rates[i].append(PROBE_BATCHES * len(batch) / (time.perf_counter() - start))
        for i, (_, m) in enumerate(opened):
            m.tiles_per_s = round(statistics.median(rates[i]), 3)
    finally:
        for backend, _ in opened:
            backend.close()
    return measured
