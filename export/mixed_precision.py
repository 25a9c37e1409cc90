"""Accuracy-aware mixed precision: the fewest layers kept in FP32 that make an INT8 export pass verification.

An INT8 export that misses the verification rules (`verify.verify_int8`: labels agreement with FP32 on
held-out tiles, test macro F1) is usually lost in a few layers. Which ones depends on the model, so it is
measured, not assumed:

1. Sensitivity: each quantized convolution (a "layer", named by its network module as `--int8-fp32`
   names it) is returned to FP32 alone, everything else quantized as before, and the labels of that model
   are compared with FP32's on calibration tiles (never the held-out verification tiles, so the ranking does
   not learn the test). The layer whose return restores the most labels is the most sensitive. Calibration
   ranges are computed once and reused (ONNX Runtime's `calibration_cache_path`), so each layer costs one
   quantization pass and a few tiles of inference.
2. Search: the most sensitive layer, then the two most sensitive, ... are kept in FP32 until the export
   passes the unchanged verification rules, up to `max_fp32` layers; the first that passes ships.
3. What they cost: the FP32 layers' share of the network's multiply-adds at the tile size, and the speed
   of the shipped model against the model without them, measured (ONNX Runtime, alternating rounds).

A model that misses with `max_fp32` layers in FP32 is refused with its figures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segcls.core.model_info import INPUT_NAME
from segcls.core.verification import VerificationReport

_SCOPE_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class Layer:
    """One quantizable convolution: its network module and its multiply-adds per tile."""

    module: str  # e.g. "encoder.layer1.0.bn1" (a conv carries the name of the BatchNorm folded into it)
    node: str
    macs: int


@dataclass(frozen=True)
class Sensitivity:
    layer: Layer
    agreement: float  # labels agreement with FP32 on the sensitivity tiles with this layer alone in FP32
    error: float  # mean |probs - FP32 probs| on them


@dataclass
class SearchResult:
    fp32_modules: tuple[str, ...]  # what the shipped (or last tried) model keeps in FP32
    added: tuple[Layer, ...]  # layers the search added to the starting set
    report: VerificationReport
    tried: int  # quantize + verify rounds


def conv_layers(fp32_path: Path, tile: int) -> list[Layer]:
    """Every Conv of the FP32 model, graph order, with its module and multiply-adds on a tile x tile input.

    Output shapes come from running the model once on a blank tile with the conv outputs exposed (the
    graph's Resize takes its size at run time, so static shape inference does not reach the decoder)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(fp32_path))
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    known = {o.name for o in model.graph.output}
    for node in convs:
        if node.output[0] not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.output[0]))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [node.output[0] for node in convs]
    shapes = [a.shape for a in session.run(names, {INPUT_NAME: np.full((1, tile, tile, 3), 255, np.uint8)})]
    layers = []
    for node, shape in zip(convs, shapes, strict=True):
        w = weights[node.input[1]]  # (out, in / groups, kh, kw)
        layers.append(Layer(module_of(node), node.name, int(np.prod(shape[1:])) * int(np.prod(w[1:]))))
    return layers


def module_of(node) -> str:
    """The network module the exporter recorded for a node: the deepest `model.*` name scope, without
    `model.` (DeployedModel holds the network as `model`)."""
    props = {p.key: p.value for p in node.metadata_props}
    scopes = [s.strip(" '\"") for s in props.get(_SCOPE_KEY, "").strip("[]").split(",")]
    modules = [s for s in scopes if s.startswith("model.")]
    return modules[-1].removeprefix("model.") if modules else node.name


def rank_layers(
    layers: list[Layer], measure: Callable[[tuple[str, ...]], tuple[float, float]], progress: bool = False
) -> list[Sensitivity]:
    """Each layer returned to FP32 alone: `measure(extra_fp32_modules) -> (agreement, error)` on the
    sensitivity tiles; most sensitive first (most labels restored, then least error)."""
    from tqdm import tqdm

    found = []
    for layer in tqdm(layers, desc="layer sensitivity", unit="layer", leave=False, disable=not progress):
        agreement, error = measure((layer.module,))
        found.append(Sensitivity(layer, agreement, error))
    return sorted(found, key=lambda s: (-s.agreement, s.error))


def search_fp32(
    base: tuple[str, ...],
    ranked: list[Sensitivity],
    verify: Callable[[tuple[str, ...]], VerificationReport],
    max_fp32: int,
    first: VerificationReport,
    log: Callable[[str], None] = lambda message: None,
) -> SearchResult:
    """Keep the 1, 2, ... `max_fp32` most sensitive layers in FP32 (besides `base`, whose verification
    report is `first`) until `verify(modules)` passes; the last report either way."""
    report, added, tried = first, (), 0
    for k in range(1, min(max_fp32, len(ranked)) + 1):
        added = tuple(s.layer for s in ranked[:k])
        modules = base + tuple(layer.module for layer in added)
        report = verify(modules)
        tried += 1
        log(f"{k} layer(s) in FP32 beyond {', '.join(base) or 'none'} ({added[-1].module} added): {report.summary()}")
        if report.passed:
            break
    return SearchResult(base + tuple(layer.module for layer in added), added, report, tried)


def macs_share(layers: list[Layer], modules: tuple[str, ...]) -> float:
    """The share of the network's convolution multiply-adds that the FP32 `modules` hold."""
    total = sum(layer.macs for layer in layers)
    fp32 = sum(layer.macs for layer in layers if any(_inside(layer.module, m) for m in modules))
    return fp32 / total if total else 0.0


def _inside(module: str, scope: str) -> bool:
    return module == scope or module.startswith(scope + ".")


def relative_speed(models: list[Path], tile: int, rounds: int = 3, threads: int | None = None) -> list[float]:
    """Tiles/s of each model over the first's: ONNX Runtime CPU (INT8 models without QDQ propagation, as
    the runtime runs them), batch 1, `tile` px, rounds alternating the models; median per-round ratio."""
    import onnxruntime as ort

    from segcls.core.model_info import disabled_optimizers, read_model_info

    sessions = []
    for path in models:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        cpu = ["CPUExecutionProvider"]
        disabled = disabled_optimizers(read_model_info(path).precision, cpu)
        extra = {"disabled_optimizers": disabled} if disabled else {}
        sessions.append(ort.InferenceSession(str(path), options, providers=cpu, **extra))
    image = np.random.default_rng(0).integers(0, 256, (1, tile, tile, 3), dtype=np.uint8)
    for session in sessions:
        session.run(["labels"], {INPUT_NAME: image})
    per_round = []
    for r in range(rounds):
        order = list(range(len(sessions)))
        seconds = [0.0] * len(sessions)
        for i in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            sessions[i].run(["labels"], {INPUT_NAME: image})
            seconds[i] = time.perf_counter() - start
        per_round.append([seconds[0] / s for s in seconds])
    return [round(statistics.median(r[i] for r in per_round), 3) for i in range(len(sessions))]
