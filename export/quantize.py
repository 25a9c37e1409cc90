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
When the model misses verification so, `Int8Options.fallback_fp32` names what else to keep in FP32 on
the next try (the first residual block, the next most sensitive).

Like every export, the INT8 model is verified before it is written (`verify.verify_int8`): labels
agreement with the FP32 model on held-out tiles (val split, never the calibration tiles) and the
test-split macro F1 against FP32's. A model that misses either is refused and nothing is written.
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
from segcls.core.errors import DatasetError, SegclsError
from segcls.core.model_info import INPUT_NAME, KEY_OPSET, KEY_PRECISION, read_model_info
from segcls.export.onnx_export import ExportResult, check_output_path, export_onnx
from segcls.export.verify import INT8_MAX_F1_DELTA, INT8_MIN_AGREEMENT, verify_int8

if TYPE_CHECKING:
    from segcls.data.folder import DatasetFolder

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZED_OPS = ("Conv", "Add", "MaxPool", "Resize", "Relu")
KEY_INT8_CALIBRATION = "segcls.int8_calibration"  # JSON of the Int8Options the model was made with
# Module name scope the exporter records on each node (`pkg.torch.onnx.name_scopes`); DeployedModel
# holds the network as `model`, so the classifier conv is `model.decoder.classifier`.
_SCOPE_KEY = "pkg.torch.onnx.name_scopes"
_RECORDED = ("method", "tiles", "tile_size", "fp32_modules", "seed", "reduce_range")


@dataclass(frozen=True)
class Int8Options:
    method: str = "percentile"  # 99.999th percentile ranges: the best agreement in docs/int8.md
    tiles: int = 64  # calibration tiles from the train split
    tile_size: int = 256
    # Network modules left unquantized. The stem conv carries the name of the BatchNorm folded into it
    # (`encoder.bn1`); it is where INT8 lost the most labels, the first residual block next (docs/int8.md).
    fp32_modules: tuple[str, ...] = ("encoder.bn1", "decoder.classifier")
    # Tried in turn while the model misses verification, each adding its modules to those in FP32.
    fallback_fp32: tuple[tuple[str, ...], ...] = (("encoder.layer1.0",),)
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
    fp32_path: Path, output: Path, tiles: np.ndarray, options: Int8Options, progress: bool = True
) -> None:
    """Quantize the FP32 model at `fp32_path` into `output`, calibrated on `tiles`; metadata says int8."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = onnx.load(str(fp32_path))
    exclude = nodes_in_modules(fp32, options.fp32_modules)
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
                _TileReader(tiles, progress),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                reduce_range=options.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=method,
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


def fp32_attempts(options: Int8Options) -> list[Int8Options]:
    """The settings tried in turn: `fp32_modules`, then each `fallback_fp32` step added to those before."""
    attempts, modules = [options], options.fp32_modules
    for step in options.fallback_fp32:
        modules = modules + tuple(m for m in step if m not in modules)
        attempts.append(replace(options, fp32_modules=modules))
    return attempts


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
        export_seconds, verify_seconds = time.perf_counter() - start, 0.0
        tiles = sample_tiles(ds, held_out, options.verify_tiles, options.tile_size, options.seed + 1)
        test = [load_pair(ds, name) for name in ds.split["test"]]
        int8 = Path(tmp) / "int8.onnx"
        attempts = fp32_attempts(options)
        for i, attempt in enumerate(attempts):
            start = time.perf_counter()
            quantize_onnx(Path(fp32_path), int8, calibration, attempt, progress)
            export_seconds += time.perf_counter() - start
            kept = ", ".join(attempt.fp32_modules) or "none"
            log(f"quantized to INT8 ({options.method}, {options.tiles} train tiles of {options.tile_size} px, "
                f"FP32 modules: {kept}) in {time.perf_counter() - start:.1f} s")  # fmt: skip
            start = time.perf_counter()
            report = verify_int8(int8, fp32_path, tiles, test, ds.num_classes, options.min_agreement,
                                 options.max_f1_delta)  # fmt: skip
            verify_seconds += time.perf_counter() - start
            log(report.summary())
            if report.passed or i == len(attempts) - 1:
                break
            log(f"missed verification: trying again with {', '.join(options.fallback_fp32[i])} in FP32 too")
        report.raise_if_failed(output)
        with atomic_path(output) as out:
            shutil.copyfile(int8, out)
    opset = int(info.metadata.get(KEY_OPSET, 0))
    return ExportResult(output, "int8", opset, output.stat().st_size, export_seconds, verify_seconds, report)
