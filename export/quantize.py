"""FP32 ONNX -> INT8 ONNX: ONNX Runtime static quantization, calibrated on tiles of a dataset.

QDQ format, uint8 activations and int8 per-channel weights: the combination ONNX Runtime's CPU kernels
run fastest on x86 without VNNI (the `quantize_static` docstring; measured in docs/int8.md). Activation
ranges come from a seeded sample of tiles of the dataset's train split. Only the heavy ops are quantized
(Conv, the residual Add, MaxPool, the decoder's Resize) and the ReLUs after them: a quantized ReLU is
removed and its range given to the conv before it, so the conv writes uint8 over [0, max] (all 256
levels for what the next layer sees) and no requantize step is left between them. Softmax, argmax and
the classification layer's max stay FP32, and so do the modules named in `Int8Options.fp32_modules`: by
default the stem conv (quantizing it cost the most labels, and its int8 kernel is no faster with 3
input channels) and the 1x1 classifier conv, whose output is the logits the labels are the argmax of.

Like every export, the INT8 model is verified before it is written (`verify.verify_int8`): labels
agreement with the FP32 model on held-out tiles (val split, never the calibration tiles) and the
test-split macro F1 against FP32's. A model that misses either is not refused at once: accuracy-aware
mixed precision (`mixed_precision.py`) measures each quantized layer's sensitivity on calibration tiles
and keeps the fewest most sensitive layers in FP32 that make it pass, up to `Int8Options.max_fp32`; the
layers and what they cost are printed. Only a model that misses with that many is refused, with its
figures, and nothing is written.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segcls.core.atomic import atomic_path
from segcls.core.constants import check_multiple
from segcls.core.errors import DatasetError, ExportError, SegclsError
from segcls.core.model_info import INPUT_NAME, KEY_OPSET, KEY_PRECISION, read_model_info
from segcls.core.verification import VerificationReport
from segcls.export.mixed_precision import (
    SearchResult,
    conv_macs,
    layer_nodes,
    macs_share,
    quantized_layers,
    rank_layers,
    relative_speed,
    search_fp32,
)
from segcls.export.onnx_export import ExportResult, check_output_path, export_onnx
from segcls.export.verify import INT8_MAX_F1_DELTA, INT8_MIN_AGREEMENT, fp32_reference, verify_int8

if TYPE_CHECKING:
    from segcls.data.folder import DatasetFolder

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZED_OPS = ("Conv", "Add", "MaxPool", "Resize", "Relu")
KEY_INT8_CALIBRATION = "segcls.int8_calibration"  # JSON of the Int8Options the model was made with
# Module name scope the exporter records on each node (`pkg.torch.onnx.name_scopes`); DeployedModel
# holds the network as `model`, so the classifier conv is `model.decoder.classifier`.
_SCOPE_KEY = "pkg.torch.onnx.name_scopes"
_RECORDED = ("method", "tiles", "tile_size", "fp32_modules", "fp32_layers", "seed", "reduce_range")


@dataclass(frozen=True)
class Int8Options:
    method: str = "percentile"  # 99.999th percentile ranges: the best agreement in docs/int8.md
    tiles: int = 64  # calibration tiles from the train split
    tile_size: int = 256
    # Network modules left unquantized. The stem conv carries the name of the BatchNorm folded into it
    # (`encoder.bn1`); it is where INT8 lost the most labels, the first residual block next (docs/int8.md).
    fp32_modules: tuple[str, ...] = ("encoder.bn1", "decoder.classifier")
    # Layers (convolutions) the accuracy-aware search may keep in FP32 besides `fp32_modules` when the model
    # misses verification; 0: exactly `fp32_modules`.
    max_fp32: int = 8
    fp32_layers: tuple[str, ...] = ()  # layers (mixed_precision.layer_of) the search kept in FP32
    sensitivity_tiles: int = 8  # calibration tiles each layer's sensitivity is measured on
    seed: int = 0
    reduce_range: bool = False  # 7-bit weights; docs/int8.md has what it changed here
    verify_tiles: int = 32  # held-out tiles (val split) for the agreement figure
    min_agreement: float = INT8_MIN_AGREEMENT
    max_f1_delta: float = INT8_MAX_F1_DELTA

    def validate(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            methods = ", ".join(CALIBRATION_METHODS)
            raise SegclsError(f"calibration method must be one of {methods}, got {self.method!r}")
        if self.tiles < 1 or self.verify_tiles < 1:
            raise SegclsError(f"calibration and verification need >= 1 tile, got {self.tiles} and {self.verify_tiles}")
        if self.max_fp32 < 0 or self.sensitivity_tiles < 1:
            raise SegclsError(
                f"the FP32 layer bound must be >= 0 and sensitivity tiles >= 1, got {self.max_fp32} and "
                f"{self.sensitivity_tiles}"
            )
        check_multiple("calibration tile size", self.tile_size)


def sample_tiles(ds, names: list[str], count: int, size: int, seed: int) -> np.ndarray:
    """`count` seeded random crops (size x size, uint8 NHWC) from the named images, spread over them.

    Images smaller than a tile are padded with white (glass), what the runtime does at a slide's edge.
    """
    from segcls.data.folder import read_image

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    picks = [names[order[i % len(names)]] for i in range(count)]
    tiles = np.full((count, size, size, 3), 255, np.uint8)
    for name in sorted(set(picks)):
        image = read_image(ds.images[name][0])
        h, w = image.shape[:2]
        for i in (i for i, pick in enumerate(picks) if pick == name):
            y, x = rng.integers(0, max(h - size, 0) + 1), rng.integers(0, max(w - size, 0) + 1)
            crop = image[y : y + size, x : x + size]
            tiles[i, : crop.shape[0], : crop.shape[1]] = crop
    return tiles


class _TileReader:
    """ONNX Runtime `CalibrationDataReader` protocol (`get_next` -> feed dict or None), one tile per run."""

    def __init__(self, tiles: np.ndarray, progress: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=len(tiles), desc="calibrate", unit="tile", leave=False, disable=not progress)
        self._tiles = iter(tiles)

    def get_next(self) -> dict | None:
        tile = next(self._tiles, None)
        if tile is None:
            self._bar.close()
            return None
        self._bar.update()
        return {INPUT_NAME: tile[None]}


def nodes_in_modules(model, modules: tuple[str, ...]) -> list[str]:
    """Names of the nodes the exporter recorded under one of `modules` (e.g. "decoder.classifier")."""
    scopes = tuple(f"model.{m}" for m in modules)
    found, unmatched = [], set(modules)
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        path = props.get(_SCOPE_KEY, "")
        for module, scope in zip(modules, scopes, strict=True):
            if f"'{scope}'" in path or f"'{scope}." in path:
                found.append(node.name)
                unmatched.discard(module)
    if unmatched:
        raise SegclsError(f"no nodes of module(s) {', '.join(sorted(unmatched))} in the exported graph")
    return found


def quantize_onnx(
    fp32_path: Path,
    output: Path,
    tiles: np.ndarray,
    options: Int8Options,
    progress: bool = True,
    calibration_cache: Path | None = None,
) -> None:
    """Quantize the FP32 model at `fp32_path` into `output`, calibrated on `tiles`; metadata says int8.

    `calibration_cache`: a file for the activation ranges: computed on the first call and written there,
    read by later calls (the same model, tiles and method; other FP32 modules) instead of calibrating again.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = onnx.load(str(fp32_path))
    exclude = nodes_in_modules(fp32, options.fp32_modules) + layer_nodes(fp32, QUANTIZED_OPS, options.fp32_layers)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options.method]  # fmt: skip
    noisy = logging.getLogger()  # quantize_static warns through the root logger
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="segcls-int8-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            # Shape inference only: the exporter's graph is already optimised (BatchNorm folded), and
            # ORT's optimiser would rename the nodes that `exclude` refers to.
            quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True)
            quantize_static(
                str(prepared),
                str(output),
                _TileReader(tiles, progress and not (calibration_cache and calibration_cache.is_file())),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                reduce_range=options.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=method,
                calibration_cache_path=calibration_cache,
            )
    except (ValueError, RuntimeError, onnx.checker.ValidationError) as e:
        raise SegclsError(f"ONNX Runtime could not quantize {fp32_path}: {str(e).splitlines()[0]}") from None
    finally:
        noisy.setLevel(level)
    model = onnx.load(str(output))
    metadata = {p.key: p.value for p in fp32.metadata_props}
    metadata[KEY_PRECISION] = "int8"
    metadata[KEY_INT8_CALIBRATION] = json.dumps({k: getattr(options, k) for k in _RECORDED})
    onnx.helper.set_model_props(model, metadata)
    model.doc_string = fp32.doc_string.replace("fp32", "int8")
    onnx.save(model, str(output))


def export_int8(
    checkpoint: str | Path,
    output: str | Path,
    dataset: str | Path,
    options: Int8Options = Int8Options(),
    *,
    opset: int | None = None,
    verify_size: int = 256,
    log: Callable[[str], None] = lambda message: None,
    progress: bool = True,
) -> ExportResult:
    """Checkpoint -> verified FP32 ONNX (in a temporary folder) -> `int8_from_onnx` into `output`."""
    from segcls.checkpoint import load_checkpoint
    from segcls.data.folder import open_dataset

    options.validate()
    check_output_path(Path(output), (".onnx",))
    split_seed = int(load_checkpoint(checkpoint).get("config", {}).get("split_seed", 0))
    ds = open_dataset(dataset, split_seed=split_seed)  # the split the model was trained on
    with tempfile.TemporaryDirectory(prefix="segcls-export-") as tmp:
        fp32 = export_onnx(
            checkpoint, Path(tmp) / "fp32.onnx", opset=opset, verify_size=verify_size, log=log, progress=progress
        )
        result = int8_from_onnx(fp32.path, output, ds, options, log=log, progress=progress)
    return replace(result, export_seconds=fp32.export_seconds + result.export_seconds)


def int8_from_onnx(
    fp32_path: str | Path,
    output: str | Path,
    ds: DatasetFolder,
    options: Int8Options = Int8Options(),
    *,
    log: Callable[[str], None] = lambda message: None,
    progress: bool = True,
) -> ExportResult:
    """Quantize a segcls FP32 ONNX model calibrated on `ds`, verify it, and only then write `output`."""
    from segcls.data.folder import load_pair

    options.validate()
    output = Path(output)
    check_output_path(output, (".onnx",))
    info = read_model_info(fp32_path)
    if info.precision != "fp32":
        raise SegclsError(f"{fp32_path} is a {info.precision} model; INT8 quantization starts from an FP32 one")
    if tuple(ds.classes) != tuple(info.description.classes):
        raise DatasetError(
            f"{ds.root} has classes {list(ds.classes)} but the model has {list(info.description.classes)}"
        )
    held_out = ds.split.get("val") or ds.split.get("test")
    for split, names in (("train", ds.split.get("train")), ("val or test", held_out), ("test", ds.split.get("test"))):
        if not names:
            raise DatasetError(f"{ds.root} has no images in its {split} split; INT8 calibration and checks need it")

    with tempfile.TemporaryDirectory(prefix="segcls-int8-") as tmp:
        start = time.perf_counter()
        calibration = sample_tiles(ds, ds.split["train"], options.tiles, options.tile_size, options.seed)
        tiles = sample_tiles(ds, held_out, options.verify_tiles, options.tile_size, options.seed + 1)
        test = [load_pair(ds, name) for name in ds.split["test"]]
        reference = fp32_reference(fp32_path, tiles, test, ds.num_classes)
        prepare_seconds = time.perf_counter() - start
        run = _Attempts(
            Path(fp32_path), Path(tmp), calibration, tiles, test, ds.num_classes, reference, options, log, progress
        )
        report = run.verify(())
        log(report.summary())
        search = None
        if not report.passed and options.max_fp32 > 0:
            search = mixed_precision(run, options, report, log)
            report = search.report
        if not report.passed:
            if search is not None:
                raise ExportError(
                    f"{output} failed verification with {len(search.layers)} more layer(s) in FP32 "
                    f"({', '.join(search.layers) or 'none'}; at most {options.max_fp32}, --int8-max-fp32): "
                    + "; ".join(str(f) for f in report.figures if not f.passed)
                )
            report.raise_if_failed(output)
        describe_fp32(run, search.layers if search is not None else (), log)
        with atomic_path(output) as out:
            shutil.copyfile(run.last, out)
        export_seconds, verify_seconds = prepare_seconds + run.quantize_seconds, run.verify_seconds
    opset = int(info.metadata.get(KEY_OPSET, 0))
    return ExportResult(output, "int8", opset, output.stat().st_size, export_seconds, verify_seconds, report)


class _Attempts:
    """Quantize with given layers in FP32 besides `options.fp32_modules` (calibration ranges computed
    once) and verify."""

    def __init__(self, fp32, folder, calibration, tiles, test, num_classes, reference, options, log, progress) -> None:
        self.fp32, self.folder, self.calibration, self.tiles, self.test = fp32, folder, calibration, tiles, test
        self.num_classes, self.reference, self.options, self.log = num_classes, reference, options, log
        self.progress = progress
        self.cache = folder / "ranges.json"
        self.quantize_seconds = self.verify_seconds = 0.0
        self.last: Path | None = None  # the model of the last verification
        self.first: Path | None = None  # the model with only `options.fp32_modules` in FP32

    def quantize(self, layers: tuple[str, ...], name: str) -> Path:
        start = time.perf_counter()
        path = self.folder / name
        quantize_onnx(self.fp32, path, self.calibration, replace(self.options, fp32_layers=layers), self.progress,
                      calibration_cache=self.cache)  # fmt: skip
        self.quantize_seconds += time.perf_counter() - start
        return path

    def verify(self, layers: tuple[str, ...]) -> VerificationReport:
        o = self.options
        first = self.first is None
        path = self.quantize(layers, "first.onnx" if first else "int8.onnx")
        if first:
            self.first = path
            self.log(f"quantized to INT8 ({o.method}, {o.tiles} train tiles of {o.tile_size} px, FP32 modules: "
                     f"{', '.join(o.fp32_modules + layers) or 'none'}) in {self.quantize_seconds:.1f} s")  # fmt: skip
        start = time.perf_counter()
        report = verify_int8(path, self.fp32, self.tiles, self.test, self.num_classes, o.min_agreement,
                             o.max_f1_delta, reference=self.reference, progress=self.progress)  # fmt: skip
        self.verify_seconds += time.perf_counter() - start
        self.last = path
        return report


def mixed_precision(
    run: _Attempts, options: Int8Options, first: VerificationReport, log: Callable[[str], None]
) -> SearchResult:
    """Rank the quantized layers by sensitivity, then keep the fewest most sensitive in FP32 that pass."""
    import onnx
    import onnxruntime as ort

    from segcls.core.model_info import disabled_optimizers

    model = onnx.load(str(run.fp32))
    kept = set(nodes_in_modules(model, options.fp32_modules))
    layers = quantized_layers(model, QUANTIZED_OPS, kept, conv_macs(run.fp32, options.tile_size))
    probe_tiles = run.calibration[: options.sensitivity_tiles]
    log(f"missed verification: measuring the sensitivity of each of {len(layers)} quantized layers on "
        f"{len(probe_tiles)} calibration tiles")  # fmt: skip
    ref_labels, ref_probs = _session(ort, run.fp32, None).run(["labels", "probs"], {INPUT_NAME: probe_tiles})

    def measure(fp32_layers: tuple[str, ...]) -> tuple[float, float]:
        path = run.quantize(fp32_layers, "probe.onnx")
        session = _session(ort, path, disabled_optimizers("int8", ["CPUExecutionProvider"]))
        labels, probs = session.run(["labels", "probs"], {INPUT_NAME: probe_tiles})
        return float((labels == ref_labels).mean()), float(np.abs(probs - ref_probs).mean())

    ranked = rank_layers(layers, measure, progress=run.progress)
    log("labels agreement on those tiles with one layer alone quantized: "
        + ", ".join(f"{s.layer.name} {s.agreement:.4f}" for s in ranked))  # fmt: skip
    return search_fp32(ranked, run.verify, options.max_fp32, first, log)


def describe_fp32(run: _Attempts, layers: tuple[str, ...], log: Callable[[str], None]) -> None:
    """What ships in FP32, its share of the network's multiply-adds, and (when the search kept layers in
    FP32) the speed they cost, measured against the model without them."""
    import onnx

    o = run.options
    model = onnx.load(str(run.fp32))
    nodes = nodes_in_modules(model, o.fp32_modules) + layer_nodes(model, QUANTIZED_OPS, layers)
    share = macs_share(conv_macs(run.fp32, o.tile_size), nodes)
    line = f"FP32: {', '.join(o.fp32_modules + layers) or 'nothing'} ({share:.1%} of the convolutions' multiply-adds)"
    if layers:
        _, first, shipped = relative_speed([run.fp32, run.first, run.last], SPEED_TILE)
        line += (f"; speed at {SPEED_TILE} px (ONNX Runtime CPU, batch 1, alternating rounds): {shipped:.2f}x FP32, "
                 f"against {first:.2f}x without the {len(layers)} layer(s) the search kept in FP32")  # fmt: skip
    log(line)


SPEED_TILE = 512  # px: the tile the cost of the FP32 layers is timed on


def _session(ort, path: Path, disabled: list[str] | None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    extra = {"disabled_optimizers": disabled} if disabled else {}
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], **extra)
