"""segcls/core/model_info.py: what export writes, the runtime reads back (no torch, no onnx needed)."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from segcls.core import model_info as mi
from segcls.core.description import ModelDescription
from segcls.core.errors import ModelError

DESCRIPTION = ModelDescription(classes=("x", "y"), mpp=0.25, tile_size=256, extra={"note": "ü"})


def _model(path, props: dict[str, str]):
    node = helper.make_node("Identity", ["image"], ["labels"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["b", 8])],
        [helper.make_tensor_value_info("labels", TensorProto.UINT8, ["b", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, props)
    onnx.save(model, path)
    return path


def test_onnx_metadata_matches_onnxruntime(tmp_path):
    props = {mi.KEY_DESCRIPTION: DESCRIPTION.to_json(), mi.KEY_PRECISION: "fp16", "long": "v" * 1000, "e": ""}
    path = _model(tmp_path / "m.onnx", props)
    assert mi.read_onnx_metadata(path) == props
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map == props
    info = mi.read_model_info(path)
    assert info.description == DESCRIPTION and info.precision == "fp16" and not info.is_engine
    assert info.tile is None and info.max_batch is None


def test_model_info_from_sidecar(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    sidecar = {
        mi.KEY_DESCRIPTION: DESCRIPTION.to_dict(),
        mi.KEY_PRECISION: "fp16",
        mi.KEY_TENSORRT_VERSION: "10.3.0",
        mi.KEY_COMPUTE_CAPABILITY: "9.0",
        mi.KEY_PROFILE: {"min": [1, 512, 768, 3], "opt": [8, 512, 768, 3], "max": [8, 512, 768, 3]},
    }
    mi.sidecar_path(engine).write_text(json.dumps(sidecar))
    info = mi.read_model_info(engine)
    assert info.is_engine and info.description == DESCRIPTION
    assert info.max_batch == 8 and info.tile == (512, 768)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not an ONNX model"),
        (b"hello world, not protobuf at all", "not an ONNX model"),
        (b"\x08\x08", "no ir_version or graph"),  # valid protobuf, but no graph
    ],
)
def test_not_onnx(tmp_path, content, message):
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        mi.read_model_info(path)


def test_onnx_without_segcls_metadata(tmp_path):
    with pytest.raises(ModelError, match="no segcls metadata"):
        mi.read_model_info(_model(tmp_path / "m.onnx", {"other": "1"}))


def test_bad_precision_and_description(tmp_path):
    path = _model(tmp_path / "a.onnx", {mi.KEY_DESCRIPTION: DESCRIPTION.to_json(), mi.KEY_PRECISION: "int4"})
    with pytest.raises(ModelError, match="precision 'int4'"):
        mi.read_model_info(path)
    path = _model(tmp_path / "b.onnx", {mi.KEY_DESCRIPTION: "{not json"})
    with pytest.raises(ModelError, match="not valid JSON"):
        mi.read_model_info(path)


def test_engine_sidecar_problems(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ModelError, match="sidecar not found"):
        mi.read_model_info(engine)
    mi.sidecar_path(engine).write_text("[1, 2]")
    with pytest.raises(ModelError, match="not an object"):
        mi.read_model_info(engine)
    mi.sidecar_path(engine).write_text("{")
    with pytest.raises(ModelError, match="not readable JSON"):
        mi.read_model_info(engine)
    with pytest.raises(ModelError, match="model not found"):
        mi.read_model_info(tmp_path / "none.onnx")


def test_runtime_modules_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; import segcls.core.model_info, segcls.runtime.backends.tensorrt; "
        "sys.exit('torch' in sys.modules or 'onnx' in sys.modules or 'tensorrt' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
