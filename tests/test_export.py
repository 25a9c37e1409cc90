"""Export: checkpoint -> verified ONNX (FP32, FP16), metadata, dynamic shapes, and the failure modes."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from segcls.checkpoint import file_sha256, save_checkpoint
from segcls.core.description import ModelDescription
from segcls.core.errors import ExportError, ModelError, SegclsError
from segcls.core.model_info import read_model_info
from segcls.deployed import DeployedModel
from segcls.export.cli import main
from segcls.export.onnx_export import export_onnx
from segcls.export.verify import float32_compute, tissue_like_images, verify_onnx
from segcls.model import build_model

DESCRIPTION = ModelDescription(classes=("background", "benign", "tumour"), mpp=0.5, tile_size=128, setting="S+C")


def _checkpoint(path, seed=0):
    torch.manual_seed(seed)
    save_checkpoint(path, build_model(DESCRIPTION.num_classes), DESCRIPTION, epoch=3)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def checkpoint(workdir):
    return _checkpoint(workdir / "model.pt")


@pytest.fixture(scope="module")
def exported(workdir, checkpoint):
    return export_onnx(checkpoint, workdir / "model.onnx", verify_size=64)


@pytest.fixture(scope="module")
def exported_fp16(workdir, checkpoint):
    return export_onnx(checkpoint, workdir / "model16.onnx", fp16=True, verify_size=64)


@pytest.fixture(scope="module")
def reference(checkpoint):
    from segcls.checkpoint import load_model

    model, description, _ = load_model(checkpoint)
    return DeployedModel(model, description).eval()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch(module, images):
    with torch.inference_mode():
        return [t.numpy() for t in module(torch.from_numpy(images))]


def test_metadata_round_trip(exported, checkpoint):
    info = read_model_info(exported.path)
    assert info.description == DESCRIPTION
    assert info.precision == "fp32"
    assert info.checkpoint_sha256 == file_sha256(checkpoint)
    assert info.version and not info.is_engine and info.max_batch is None
    # The light reader and onnxruntime agree on every key.
    assert _session(exported.path).get_modelmeta().custom_metadata_map == info.metadata


def test_fp32_verification_figures(exported):
    report = exported.report
    assert report.passed and len(report.cases) == 4
    figures = {f.name: f.value for f in report.figures}
    assert figures["probs max|diff|"] <= 1e-4
    assert figures["labels agreement"] >= 0.999


def test_graph_contract_and_dynamic_shapes(exported, reference):
    model = onnx.load(exported.path)
    (image,) = model.graph.input
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, True, True, False] and dims[3].dim_value == 3
    assert [o.name for o in model.graph.output] == ["labels", "probs", "class_scores"]
    session = _session(exported.path)
    rng = np.random.default_rng(1)
    for batch, h, w in [(1, 64, 64), (3, 64, 64), (3, 96, 48), (1, 128, 80)]:
        images = rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
        labels, probs, scores = session.run(None, {"image": images})
        assert labels.dtype == np.uint8 and labels.shape == (batch, h // 8, w // 8)
        assert probs.shape == (batch, 3, h // 8, w // 8) and scores.shape == (batch, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
        ref = _torch(reference, images)
        np.testing.assert_allclose(probs, ref[1], atol=1e-4)
        np.testing.assert_allclose(scores, ref[2], atol=1e-4)


def test_uint8_input_path_equals_model_on_normalised_input(reference):
    """The in-graph cast/normalise/transpose is (rgb/255 - mean) / std of the description."""
    images = tissue_like_images(2, 64, 96, np.random.default_rng(2))
    labels, probs, scores = _torch(reference, images)
    mean, std = np.array(DESCRIPTION.mean), np.array(DESCRIPTION.std)
    x = torch.from_numpy(((images / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
    with torch.inference_mode():
        out = reference.model(x, full_res=False)
    np.testing.assert_allclose(scores, out.class_scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(probs, torch.softmax(out.low_res_logits, 1).numpy(), atol=1e-6)
    assert (labels == out.low_res_logits.argmax(1).numpy()).mean() > 0.999


def test_fp16_model(exported_fp16, exported, reference):
    info = read_model_info(exported_fp16.path)
    assert info.precision == "fp16" and info.description == DESCRIPTION
    assert exported_fp16.nbytes < 0.6 * exported.nbytes  # the weights really are 2 bytes
    model = onnx.load(exported_fp16.path)
    assert float32_compute(model) == []
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    convs = [n for n in model.graph.initializer if n.name.endswith("weight")]
    assert convs and all(t.data_type == onnx.TensorProto.FLOAT16 for t in convs)
    # ORT CPU runs it, and it agrees with FP32 torch within the FP16 criteria.
    images = tissue_like_images(3, 64, 64, np.random.default_rng(3))
    labels, probs, scores = _session(exported_fp16.path).run(None, {"image": images})
    assert labels.dtype == np.uint8 and probs.dtype == np.float16 and scores.dtype == np.float32
    ref = _torch(reference, images)
    assert (labels == ref[0]).mean() >= 0.995
    assert np.all(np.abs(scores - ref[2]) <= 1e-2 * np.maximum(1, np.abs(ref[2])))
    assert exported_fp16.report.passed


def test_float32_compute_is_found_in_fp32_model(exported):
    leftover = float32_compute(onnx.load(exported.path))
    assert any(name.startswith("Conv") for name in leftover)


def test_verification_catches_a_different_model(exported, workdir):
    other = _checkpoint(workdir / "other.pt", seed=1)
    from segcls.checkpoint import load_model

    model, description, _ = load_model(other)
    report = verify_onnx(exported.path, DeployedModel(model, description).eval(), "fp32", size=64)
    assert not report.passed
    with pytest.raises(ExportError, match="failed verification"):
        report.raise_if_failed(exported.path)


def test_cli_failed_verification_exits_1_and_leaves_nothing(exported, workdir, monkeypatch):
    """The exported graph is swapped for another model's: verification must fail the export."""
    import segcls.export.onnx_export as onnx_export

    other = _checkpoint(workdir / "other2.pt", seed=2)
    monkeypatch.setattr(onnx_export, "_torch_to_onnx", lambda module, opset: onnx.load(exported.path))
    out = workdir / "failed" / "bad.onnx"
    out.parent.mkdir()
    result = CliRunner().invoke(main, [str(other), "-o", str(out), "--verify-size", "64"])
    assert result.exit_code == 1, result.output
    assert "Error:" in result.output and "failed verification" in result.output
    assert list(out.parent.iterdir()) == []


def test_cli_writes_model(checkpoint, workdir, monkeypatch, exported):
    import segcls.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "_torch_to_onnx", lambda module, opset: onnx.load(exported.path))
    out = workdir / "cli" / "m.onnx"
    out.parent.mkdir()
    result = CliRunner().invoke(main, [str(checkpoint), "-o", str(out), "--verify-size", "64"])
    assert result.exit_code == 0, result.output
    assert "labels agreement" in result.output and "wrote" in result.output
    assert read_model_info(out).description == DESCRIPTION
    assert [p.name for p in out.parent.iterdir()] == ["m.onnx"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize(
    "make_input, output, message",
    [
        (lambda d: d / "missing.pt", "m.onnx", "does not exist"),
        (lambda d: (d / "junk.pt").write_bytes(b"not a checkpoint") and d / "junk.pt", "m.onnx", "not a readable"),
        (lambda d: d / "model.pt", "m.engine", "must be a .onnx file"),
        (lambda d: d / "model.pt", "no_such_dir/m.onnx", "output folder does not exist"),
        (lambda d: d / "model.pt", "model.pt/m.onnx", "output folder does not exist"),
    ],
)
def test_cli_user_errors(checkpoint, workdir, make_input, output, message):
    ckpt = make_input(workdir)
    result = CliRunner().invoke(main, [str(ckpt), "-o", str(workdir / output)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error:") and message in result.output
    assert not (workdir / output).exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux procfs")
def test_unwritable_output_folder(checkpoint, monkeypatch):
    """A folder that exists but takes no new file, even from root (CI runs as root, which ignores folder
    modes): /proc. The export fails with one clear error before any slow work."""
    import segcls.export.onnx_export as onnx_export

    def not_reached(*args, **kwargs):
        raise AssertionError("the output folder must be checked before exporting")

    monkeypatch.setattr(onnx_export, "_torch_to_onnx", not_reached)
    with pytest.raises(SegclsError, match="cannot write to /proc"):
        export_onnx(checkpoint, "/proc/m.onnx")
    result = CliRunner().invoke(main, [str(checkpoint), "-o", "/proc/m.onnx"])
    assert result.exit_code == 2 and result.output.startswith("Error: cannot write to /proc")


def test_checkpoint_is_not_a_model_file(checkpoint):
    with pytest.raises(ModelError, match="not an ONNX model"):
        read_model_info(checkpoint)


def test_cli_trt_without_tensorrt(checkpoint, workdir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    out = workdir / "trt" / "m.onnx"
    out.parent.mkdir()
    result = CliRunner().invoke(main, [str(checkpoint), "-o", str(out), "--trt"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: TensorRT is not installed: pip install 'segcls[gpu]'"
    assert list(out.parent.iterdir()) == []


def test_description_json_in_metadata(exported):
    meta = read_model_info(exported.path).metadata
    assert json.loads(meta["segcls.core.description"])["classes"] == list(DESCRIPTION.classes)
    assert meta["segcls.precision"] == "fp32" and int(meta["segcls.opset"]) >= 17
