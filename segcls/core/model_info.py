"""What an exported model is, read without torch or onnx: ONNX `metadata_props` and engine sidecars.

The export writes these keys and the runtime reads them, so they are defined here, once. An ONNX model
carries them as string `metadata_props`; a TensorRT engine cannot, so they travel in a JSON sidecar
beside it (`model.engine.json`) together with what the engine is bound to (TensorRT version, GPU).
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass
from pathlib import Path

from segcls.core.description import ModelDescription
from segcls.core.errors import ModelError

KEY_DESCRIPTION = "segcls.core.description"  # ModelDescription JSON
KEY_VERSION = "segcls.version"  # segcls version that exported the model
KEY_CHECKPOINT_SHA256 = "segcls.checkpoint_sha256"
KEY_PRECISION = "segcls.precision"  # one of PRECISIONS
KEY_OPSET = "segcls.opset"
# Engine sidecars only.
KEY_ONNX_SHA256 = "segcls.onnx_sha256"
KEY_TENSORRT_VERSION = "segcls.tensorrt_version"
KEY_COMPUTE_CAPABILITY = "segcls.compute_capability"  # "major.minor" of the GPU the engine was built on
KEY_DEVICE_NAME = "segcls.device_name"
KEY_PROFILE = "segcls.profile"  # {"min"|"opt"|"max": [batch, H, W, 3]} of the input `image`

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME = "image"
OUTPUT_NAMES = ("labels", "probs", "class_scores")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    description: ModelDescription
    precision: str
    version: str
    checkpoint_sha256: str
    metadata: dict  # every key that was stored, as stored

    @property
    def is_engine(self) -> bool:
        return KEY_TENSORRT_VERSION in self.metadata

    @property
    def max_batch(self) -> int | None:
        """Largest batch an engine accepts (None for ONNX: any)."""
        profile = self.metadata.get(KEY_PROFILE)
        return int(profile["max"][0]) if profile else None

    @property
    def tile(self) -> tuple[int, int] | None:
        """(H, W) an engine was built for (None for ONNX: any multiple of 16)."""
        profile = self.metadata.get(KEY_PROFILE)
        return (int(profile["max"][1]), int(profile["max"][2])) if profile else None


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_model_info(path: str | Path) -> ModelInfo:
    """Read an ONNX model's metadata, or a TensorRT engine's sidecar."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model not found: {path}")
    if path.suffix.lower() in ENGINE_SUFFIXES or sidecar_path(path).is_file():
        return model_info_from_metadata(read_sidecar(path), path)
    return model_info_from_metadata(read_onnx_metadata(path), path)


def read_sidecar(engine_path: str | Path) -> dict:
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise ModelError(
            f"engine sidecar not found: {side} (segcls-export --trt writes it beside the engine; "
            "an engine without it cannot be used)"
        )
    try:
        metadata = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"engine sidecar {side} is not readable JSON: {e}") from None
    if not isinstance(metadata, dict):
        raise ModelError(f"engine sidecar {side} holds a {type(metadata).__name__}, not an object")
    return metadata


def model_info_from_metadata(metadata: dict, path: str | Path) -> ModelInfo:
    """Interpret stored metadata: ONNX `custom_metadata_map` (all strings) or a sidecar (JSON values)."""
    path = Path(path)
    if KEY_DESCRIPTION not in metadata:
        raise ModelError(f"{path} has no segcls metadata ('{KEY_DESCRIPTION}'); export it with segcls-export")
    raw = metadata[KEY_DESCRIPTION]
    description = ModelDescription.from_dict(raw) if isinstance(raw, dict) else ModelDescription.from_json(raw)
    precision = metadata.get(KEY_PRECISION, "fp32")
    if precision not in PRECISIONS:
        raise ModelError(f"{path} has precision {precision!r}; expected one of {PRECISIONS}")
    return ModelInfo(
        path=path,
        description=description,
        precision=precision,
        version=str(metadata.get(KEY_VERSION, "")),
        checkpoint_sha256=str(metadata.get(KEY_CHECKPOINT_SHA256, "")),
        metadata=dict(metadata),
    )


# ONNX ModelProto field numbers (onnx/onnx.proto3): metadata_props is `repeated StringStringEntryProto`.
_IR_VERSION, _GRAPH, _METADATA_PROPS = 1, 7, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """`metadata_props` of an ONNX file, by walking the protobuf wire format of the top-level message.

    Needs neither onnx nor onnxruntime and never builds a session: the graph (field 7) is skipped by its
    length. Gives the same map as onnxruntime's `InferenceSession(p).get_modelmeta().custom_metadata_map`.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            seen, props = set(), {}
            for number, value in _fields(buf, 0, len(buf)):
                seen.add(number)
                if number == _METADATA_PROPS:
                    entry = dict(_fields(buf, *value))
                    key = bytes(buf[slice(*entry.get(_ENTRY_KEY, (0, 0)))]).decode()
                    props[key] = bytes(buf[slice(*entry.get(_ENTRY_VALUE, (0, 0)))]).decode()
    except (ValueError, OSError, UnicodeDecodeError, IndexError) as e:
        raise ModelError(f"{path} is not an ONNX model ({e})") from None
    if _IR_VERSION not in seen or _GRAPH not in seen:
        raise ModelError(f"{path} is not an ONNX model (no ir_version or graph)")
    return props


def _fields(buf, start: int, end: int):
    """Yield (field number, value) of one protobuf message; length-delimited values as (start, end)."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = (pos, pos + length), pos + length
        elif wire == 5:
            value, pos = None, pos + 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire} at byte {pos}")
        if number == 0 or pos > end:
            raise ValueError(f"malformed protobuf at byte {pos}")
        yield number, value


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError(f"varint too long at byte {pos}")


def disabled_optimizers(precision: str, providers: list[str]) -> list[str] | None:
    """ONNX Runtime graph optimizers to turn off for this model on these providers.

    INT8 on the CPU: QDQ propagation moves the quantize step after the FP32 stem's MaxPool up before it,
    so the pool runs on uint8 in plain NCHW, ~65 ms per 1024 px tile against ~5 ms in the blocked FP32
    layout (docs/int8.md). Results are the same: max commutes with a monotone quantization.
    """
    if precision == "int8" and providers and providers[0] == "CPUExecutionProvider":
        return ["QDQPropagationTransformer"]
    return None
