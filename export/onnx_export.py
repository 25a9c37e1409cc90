"""Checkpoint -> verified ONNX model (uint8 pixels in; labels, probs, class scores out).

Exported with torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`, `dynamic_shapes`): batch,
height and width are symbolic in the saved graph (H and W as 16 * n). FP16 is exported from the module
cast to half, so the uint8 -> float16 cast is the graph's first op and weights and compute are FP16 (no
post-hoc converter); see `verify.float32_compute` for the one float32 op that remains. The file is
written under a temporary name, checked (`onnx.checker` full check, strict shape inference), verified
against torch, and only then renamed into place: a failed export leaves nothing behind.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segcls.core.atomic import atomic_path, check_writable
from segcls.core.errors import ExportError, SegclsError
from segcls.core.model_info import (
    INPUT_NAME,
    KEY_CHECKPOINT_SHA256,
    KEY_DESCRIPTION,
    KEY_OPSET,
    KEY_PRECISION,
    KEY_VERSION,
    OUTPUT_NAMES,
)
from segcls.export.verify import VerificationReport, float32_compute

# Shape of the example input the exporter traces with; any multiple of 16 works, small is fast.
_TRACE_SHAPE = (2, 64, 64, 3)


@dataclass
class ExportResult:
    path: Path
    precision: str
    opset: int
    nbytes: int
    export_seconds: float
    verify_seconds: float
    report: VerificationReport | None  # None when verification was skipped

    def summary(self) -> str:
        return (
            f"wrote {self.path} ({self.precision}, opset {self.opset}, {self.nbytes / 2**20:.1f} MiB): "
            f"export {self.export_seconds:.1f} s, verification {self.verify_seconds:.1f} s"
        )


def check_output_path(path: Path, suffixes: tuple[str, ...]) -> None:
    """Fail before any slow work when the output cannot be written."""
    if path.suffix.lower() not in suffixes:
        raise SegclsError(f"output must be a {' or '.join(suffixes)} file, got {path}")
    check_writable(path)


def export_onnx(
    checkpoint: str | Path,
    output: str | Path,
    *,
    fp16: bool = False,
    opset: int | None = None,
    verify: bool = True,
    verify_size: int = 256,
    log: Callable[[str], None] = lambda message: None,
    progress: bool = True,
) -> ExportResult:
    """Export `checkpoint` to `output` (.onnx); raises ExportError when the model fails verification."""
    import onnx

    from segcls import __version__
    from segcls.checkpoint import file_sha256, load_model
    from segcls.deployed import DeployedModel
    from segcls.export.verify import verify_onnx

    output = Path(output)
    check_output_path(output, (".onnx",))
    model, description, _ = load_model(checkpoint)
    deployed = DeployedModel(model, description).eval()
    precision = "fp16" if fp16 else "fp32"

    start = time.perf_counter()
    proto = _torch_to_onnx(copy.deepcopy(deployed).half() if fp16 else deployed, opset)
    exported_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    metadata = {
        KEY_DESCRIPTION: description.to_json(),
        KEY_VERSION: __version__,
        KEY_CHECKPOINT_SHA256: file_sha256(checkpoint),
        KEY_PRECISION: precision,
        KEY_OPSET: str(exported_opset),
    }
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = f"segcls {precision} model: {', '.join(description.classes)}"

    with atomic_path(output) as tmp:
        onnx.save(proto, tmp)
        _check_onnx(tmp, proto, fp16)
        export_seconds = time.perf_counter() - start
        log(f"exported {precision} ONNX (opset {exported_opset}) in {export_seconds:.1f} s; checker passed")
        report, verify_start = None, time.perf_counter()
        if verify:
            report = verify_onnx(tmp, deployed, precision, size=verify_size, progress=progress)
            log(report.summary())
            report.raise_if_failed(output)
        verify_seconds = time.perf_counter() - verify_start
        nbytes = os.path.getsize(tmp)
    return ExportResult(output, precision, exported_opset, nbytes, export_seconds, verify_seconds, report)


def _torch_to_onnx(module, opset: int | None):
    import torch

    batch = torch.export.Dim("batch", min=1)
    height, width = torch.export.Dim("h16", min=1), torch.export.Dim("w16", min=1)
    example = torch.randint(0, 256, _TRACE_SHAPE, dtype=torch.uint8)
    noisy = logging.getLogger("torch.onnx")  # "torchvision is not installed" etc.
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"image": {0: batch, 1: 16 * height, 2: 16 * width}},
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; the first line says what broke
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.onnx.export failed: {first}") from None
    finally:
        noisy.setLevel(level)
    return program.model_proto


def _check_onnx(path: Path, proto, fp16: bool) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"exported model does not pass the ONNX checker: {str(e).splitlines()[0]}") from None
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    if not all(isinstance(d, str) for d in dims[:3]):
        raise ExportError(f"exported input '{INPUT_NAME}' has fixed dims {dims}; batch, H and W must be dynamic")
    if fp16:
        leftover = float32_compute(proto)
        if leftover:
            raise ExportError(f"FP16 export still computes in float32 at {len(leftover)} nodes: {leftover[:5]}")
