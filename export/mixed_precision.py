"""Accuracy-aware mixed precision: the fewest layers kept in FP32 that make an INT8 export pass verification.

An INT8 export that misses the verification rules (`verify.verify_int8`: labels agreement with FP32 on
held-out tiles, test macro F1) loses its labels in some layers more than in others, and which ones depends
on the model, so it is measured, not assumed:

- A layer is what keeps its tensors in FP32 when it is not quantized: a residual block (`encoder.layer1.0`:
  its convolutions, the add and the ReLUs; a lone convolution in FP32 leaves the block's add and ReLUs
  quantized, and with them the residual stream, where a weakly trained model lost its labels), or what is
  left of a top-level module (`encoder`: the stem's ReLU and max pool; `decoder`: its convolution, ReLU
  and upsampling) besides the modules `Int8Options.fp32_modules` keeps in FP32 anyway.
- Sensitivity: each layer alone is quantized, every other one kept in FP32, and that model's labels are
  compared with FP32's on calibration tiles (never the held-out verification tiles, so the ranking does
  not learn the test). The layer that loses the most labels on its own is the most sensitive. Calibration
  ranges are computed once and reused (ONNX Runtime's `calibration_cache_path`), so each layer costs one
  quantization pass and a few tiles of inference.
- Search: the most sensitive layer, then the two most sensitive, ... are kept in FP32 until the export
  passes the unchanged verification rules, up to `max_fp32` layers; the first that passes ships.
- What they cost: the FP32 layers' share of the network's convolution multiply-adds, and the speed of
  the shipped model against the model without them, measured (ONNX Runtime, alternating rounds).

A model that misses with `max_fp32` layers in FP32 is refused with its figures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segcls.core.errors import SegclsError
from segcls.core.model_info import INPUT_NAME
from segcls.core.verification import VerificationReport

_SCOPE_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class Layer:
    """What the search keeps in FP32 or not, as a whole: a residual block or the rest of a module."""

    name: str  # e.g. "encoder.layer1.0"
    nodes: tuple[str, ...]  # its quantizable nodes
    macs: int  # its convolutions' multiply-adds per tile


@dataclass(frozen=True)
class Sensitivity:
    layer: Layer
    agreement: float  # labels agreement with FP32 on the sensitivity tiles with this layer alone quantized
    error: float  # mean |probs - FP32 probs| on them


@dataclass
class SearchResult:
    layers: tuple[str, ...]  # layers the search keeps in FP32 besides the starting modules
    report: VerificationReport  # of the shipped (or last tried) model
    tried: int  # quantize + verify rounds


def layer_of(module: str) -> str:
    """The layer a node of `module` belongs to: up to the block index (`encoder.layer1.0.bn1` ->
    `encoder.layer1.0`), else the top-level module (`encoder.relu` -> `encoder`)."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0]


def module_of(node) -> str:
    """The network module the exporter recorded for a node: the deepest `model.*` name scope, without
    `model.` (DeployedModel holds the network as `model`)."""
    props = {p.key: p.value for p in node.metadata_props}
    scopes = [s.strip(" '\"") for s in props.get(_SCOPE_KEY, "").strip("[]").split(",")]
    modules = [s for s in scopes if s.startswith("model.")]
    return modules[-1].removeprefix("model.") if modules else node.name


def quantized_layers(model, ops: tuple[str, ...], kept: set[str], macs: dict[str, int] | None = None) -> list[Layer]:
    """The layers of `model` (graph order) made of its nodes of type `ops` that are not in `kept` (the
    nodes FP32 anyway); `macs`: multiply-adds per conv node (`conv_macs`)."""
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in ops and node.name not in kept:
            groups.setdefault(layer_of(module_of(node)), []).append(node.name)
    macs = macs or {}
    return [Layer(name, tuple(nodes), sum(macs.get(n, 0) for n in nodes)) for name, nodes in groups.items()]


def layer_nodes(model, ops: tuple[str, ...], names: tuple[str, ...]) -> list[str]:
    """The quantizable nodes of the named layers; an unknown name is a one-line error."""
    found = {layer.name: layer for layer in quantized_layers(model, ops, set())}
    unknown = [n for n in names if n not in found]
    if unknown:
        raise SegclsError(f"no layer(s) {', '.join(unknown)} in the exported graph (it has {', '.join(found)})")
    return [node for name in names for node in found[name].nodes]


def conv_macs(fp32_path: Path, tile: int) -> dict[str, int]:
    """Multiply-adds of every Conv node on a tile x tile input.

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
    return {  # output elements x (in / groups) x kh x kw
        node.name: int(np.prod(shape[1:])) * int(np.prod(weights[node.input[1]][1:]))
        for node, shape in zip(convs, shapes, strict=True)
    }


def rank_layers(
    layers: list[Layer], measure: Callable[[tuple[str, ...]], tuple[float, float]], progress: bool = False
) -> list[Sensitivity]:
    """Each layer alone quantized: `measure(layers kept in FP32) -> (agreement, error)` on the sensitivity
    tiles, every other layer in FP32; most sensitive first (fewest labels kept, then most error)."""
    from tqdm import tqdm

    found = []
    for layer in tqdm(layers, desc="layer sensitivity", unit="layer", leave=False, disable=not progress):
        agreement, error = measure(tuple(other.name for other in layers if other is not layer))
        found.append(Sensitivity(layer, agreement, error))
    return sorted(found, key=lambda s: (s.agreement, -s.error))


def search_fp32(
    ranked: list[Sensitivity],
    verify: Callable[[tuple[str, ...]], VerificationReport],
    max_fp32: int,
    first: VerificationReport,
    log: Callable[[str], None] = lambda message: None,
) -> SearchResult:
    """Keep the 1, 2, ... `max_fp32` most sensitive layers in FP32 until `verify(layers)` passes (`first`:
    the report with none of them); the last report either way."""
    report, layers, tried = first, (), 0
    for k in range(1, min(max_fp32, len(ranked)) + 1):
        layers = tuple(s.layer.name for s in ranked[:k])
        report = verify(layers)
        tried += 1
        log(f"{k} layer(s) in FP32 ({', '.join(layers)}): {report.summary()}")
        if report.passed:
            break
    return SearchResult(layers, report, tried)


def macs_share(macs: dict[str, int], nodes: list[str]) -> float:
    """The share of the network's convolution multiply-adds that `nodes` hold."""
    total = sum(macs.values())
    return sum(macs.get(n, 0) for n in set(nodes)) / total if total else 0.0


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
