"""INT8 export: static quantization calibrated on a dataset, verified against FP32, refused when it misses."""

from __future__ import annotations

import functools
import json

import numpy as np
import onnx
import pytest
from _runtime_models import deployed
from _train_helpers import colour_dataset
from click.testing import CliRunner

import segcls.export.cli as export_cli
import segcls.export.onnx_export as onnx_export
from segcls.core.errors import ExportError, SegclsError
from segcls.core.model_info import disabled_optimizers, read_model_info
from segcls.data.folder import open_dataset
from segcls.export.onnx_export import export_onnx
from segcls.export.quantize import Int8Options, int8_from_onnx, quantize_onnx, sample_tiles
from segcls.export.verify import verify_int8
from segcls.runtime.backends import open_backend

FAST = dict(tiles=4, tile_size=64, verify_tiles=4)
# A random network has near ties everywhere, so no INT8 of it keeps 99 % of its labels: the export tests
# that must succeed pass criteria it can meet; the criteria themselves are tested by the refusals below,
# and the figures of a trained model are in docs/int8.md.
LENIENT = dict(min_agreement=0.5, max_f1_delta=1.0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("int8")


@pytest.fixture(scope="module")
def dataset(workdir):
    return colour_dataset(workdir / "colours")


@pytest.fixture(scope="module")
def checkpoint(workdir):
    """A tiny random network with the dataset's classes (training one is too slow for a unit test)."""
    from segcls.checkpoint import save_checkpoint

    module, description = deployed(seed=0, classes=("red", "green", "blue"))
    save_checkpoint(workdir / "model.pt", module.model, description)
    return workdir / "model.pt"


@pytest.fixture(scope="module")
def fp32(workdir, checkpoint):
    return export_onnx(checkpoint, workdir / "fp32.onnx", verify=False).path


@pytest.fixture
def fast_export(monkeypatch, fp32):
    """The CLI's torch -> ONNX step (the slow part, tested in test_export.py) reuses the exported graph."""
    monkeypatch.setattr(onnx_export, "_torch_to_onnx", lambda module, opset: onnx.load(fp32))


def _cli_args(checkpoint, dataset, out):
    return [str(checkpoint), "-o", str(out), "--int8", "--calibrate", str(dataset), "--calib-tiles", "4",
            "--calib-size", "64", "--verify-size", "64"]  # fmt: skip


def test_cli_int8_export_is_verified_and_loadable(checkpoint, dataset, workdir, fast_export, monkeypatch):
    monkeypatch.setattr(export_cli, "Int8Options", functools.partial(Int8Options, verify_tiles=4, **LENIENT))
    out = workdir / "cli" / "m.int8.onnx"
    out.parent.mkdir()
    result = CliRunner().invoke(export_cli.main, _cli_args(checkpoint, dataset, out))
    assert result.exit_code == 0, result.output
    assert "labels agreement (held-out tiles)" in result.output and "test macro F1 fp32" in result.output
    assert "wrote" in result.output and "int8" in result.output
    assert [p.name for p in out.parent.iterdir()] == ["m.int8.onnx"]
    info = read_model_info(out)
    assert info.precision == "int8" and info.description.classes == ("red", "green", "blue")
    calibration = json.loads(info.metadata["segcls.int8_calibration"])
    assert calibration["method"] == Int8Options.method and calibration["tiles"] == 4
    assert calibration["fp32_modules"] == list(Int8Options.fp32_modules)
    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 10 and "DequantizeLinear" in ops
    with open_backend(out) as backend:
        assert backend.info.precision == "int8"
        got = backend.infer(np.full((2, 64, 96, 3), 128, np.uint8))
    assert got.labels.shape == (2, 8, 12) and got.labels.dtype == np.uint8
    assert got.probs.shape == (2, 3, 8, 12) and got.class_scores.shape == (2, 3)


def test_cli_refuses_a_model_that_misses_the_criteria(checkpoint, dataset, workdir, fast_export, monkeypatch):
    impossible = functools.partial(Int8Options, verify_tiles=4, min_agreement=1.01, max_f1_delta=1.0)
    monkeypatch.setattr(export_cli, "Int8Options", impossible)
    out = workdir / "refused" / "m.int8.onnx"
    out.parent.mkdir()
    result = CliRunner().invoke(export_cli.main, [*_cli_args(checkpoint, dataset, out), "--int8-max-fp32", "0"])
    assert result.exit_code == 1, result.output
    assert "Error:" in result.output and "failed verification" in result.output
    assert "labels agreement (held-out tiles)" in result.output  # the figures are printed
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    "criterion, kept",
    [({"min_agreement": 1.01}, "labels agreement"), ({"max_f1_delta": -1.0}, "test macro F1")],
)
def test_each_criterion_alone_refuses(fp32, dataset, tmp_path, criterion, kept):
    ds = open_dataset(dataset)
    out = tmp_path / "m.int8.onnx"
    with pytest.raises(ExportError, match="failed verification") as error:
        int8_from_onnx(fp32, out, ds, Int8Options(**FAST, **{**LENIENT, **criterion}, max_fp32=0))
    failed = str(error.value).split("failed verification:")[1]
    assert kept in failed and len(failed.split(";")) == 1  # only this criterion failed
    assert list(tmp_path.iterdir()) == []


def test_badly_calibrated_model_fails_verification(fp32, dataset, tmp_path):
    """Ranges from black tiles clip the real activations: far fewer labels survive than with ranges from
    the dataset, and verification says so. MinMax, everything but the classifier quantized: where a bad
    range does the most harm."""
    ds = open_dataset(dataset)
    options = Int8Options(**FAST, method="minmax", fp32_modules=("decoder.classifier",))
    held_out = sample_tiles(ds, ds.split["val"], 8, 64, seed=1)
    test = [(t, np.zeros(t.shape[:2], np.uint8)) for t in held_out]  # any scored images do here
    agreement = {}
    for name, tiles in (("dataset", sample_tiles(ds, ds.split["train"], 4, 64, seed=0)),
                        ("black", np.zeros((4, 64, 64, 3), np.uint8))):  # fmt: skip
        quantize_onnx(fp32, tmp_path / f"{name}.onnx", tiles, options, progress=False)
        report = verify_int8(tmp_path / f"{name}.onnx", fp32, held_out, test, ds.num_classes)
        agreement[name] = report.figures[0].value
    assert not report.passed and agreement["black"] < 0.99
    assert agreement["black"] < agreement["dataset"] - 0.05, agreement


def test_sample_tiles_seeded_and_padded(dataset):
    ds = open_dataset(dataset)
    a = sample_tiles(ds, ds.split["train"], 5, 160, seed=3)  # images are 128 px: white padding
    b = sample_tiles(ds, ds.split["train"], 5, 160, seed=3)
    assert a.shape == (5, 160, 160, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and (a[:, 128:] == 255).all()
    assert not np.array_equal(a, sample_tiles(ds, ds.split["train"], 5, 160, seed=4))


def test_unknown_fp32_module_and_bad_options(fp32, dataset, tmp_path):
    ds = open_dataset(dataset)
    with pytest.raises(SegclsError, match="no nodes of module"):
        int8_from_onnx(fp32, tmp_path / "m.onnx", ds, Int8Options(**FAST, fp32_modules=("decoder.nope",)))
    with pytest.raises(SegclsError, match="calibration method"):
        int8_from_onnx(fp32, tmp_path / "m.onnx", ds, Int8Options(method="kl"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "extra, message",
    [([], "go together"), (["--fp16"], "neither --fp16"), (["--trt"], "neither --fp16 nor --trt")],
)
def test_cli_int8_usage_errors(checkpoint, dataset, tmp_path, extra, message):
    args = [str(checkpoint), "-o", str(tmp_path / "m.onnx"), "--int8", *extra]
    if extra:
        args += ["--calibrate", str(dataset)]
    result = CliRunner().invoke(export_cli.main, args)
    assert result.exit_code == 2 and message in result.output


def test_a_model_that_misses_gets_its_most_sensitive_layers_in_fp32_until_it_passes(fp32, dataset, tmp_path):
    """All layers in FP32 is the FP32 model itself (agreement 1): a bar only that meets is met by the search."""
    out, log = tmp_path / "m.int8.onnx", []
    options = Int8Options(**FAST, min_agreement=1.0, max_f1_delta=1.0, sensitivity_tiles=2)
    int8_from_onnx(fp32, out, open_dataset(dataset), options, log=log.append)
    assert any(line.startswith("missed verification: measuring the sensitivity of each of 8 quantized layers")
               for line in log)  # fmt: skip
    ranking = next(line for line in log if line.startswith("labels agreement on those tiles with one layer alone"))
    assert "encoder.layer1.0" in ranking and "decoder" in ranking
    recorded = json.loads(read_model_info(out).metadata["segcls.int8_calibration"])
    assert recorded["fp32_modules"] == list(Int8Options.fp32_modules) and recorded["fp32_layers"]
    shipped = next(line for line in log if line.startswith("FP32: "))
    assert (
        all(layer in shipped for layer in recorded["fp32_layers"]) and "of the convolutions' multiply-adds" in shipped
    )
    assert "x FP32, against" in shipped  # the speed the FP32 layers cost, measured


def test_a_model_that_misses_with_the_most_fp32_layers_allowed_is_refused_with_its_figures(fp32, dataset, tmp_path):
    out, log = tmp_path / "m.int8.onnx", []
    options = Int8Options(**FAST, min_agreement=1.01, max_f1_delta=1.0, max_fp32=2, sensitivity_tiles=2)
    expected = r"failed verification with 2 more layer\(s\) in FP32 .*--int8-max-fp32\): labels agreement \(held-out"
    with pytest.raises(ExportError, match=expected):
        int8_from_onnx(fp32, out, open_dataset(dataset), options, log=log.append)
    assert sum("layer(s) in FP32 (" in line for line in log) == 2 and list(tmp_path.iterdir()) == []


def test_max_fp32_zero_keeps_exactly_the_named_modules(fp32, dataset, tmp_path):
    options = Int8Options(**FAST, min_agreement=1.01, max_f1_delta=1.0, max_fp32=0)
    log = []
    with pytest.raises(ExportError, match=r"m.int8.onnx failed verification: labels agreement"):
        int8_from_onnx(fp32, tmp_path / "m.int8.onnx", open_dataset(dataset), options, log=log.append)
    assert not any("sensitivity" in line for line in log)


def test_relus_are_folded_into_the_quantized_convs(fp32, dataset, tmp_path):
    ds = open_dataset(dataset)
    quantize_onnx(fp32, tmp_path / "q.onnx", sample_tiles(ds, ds.split["train"], 4, 64, seed=0), Int8Options(**FAST))
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    relus = [n for n in graph.node if n.op_type == "Relu"]
    producers = {o: n for n in graph.node for o in n.output}
    assert sum(n.op_type == "Relu" for n in onnx.load(str(fp32)).graph.node) > 10
    assert [producers[r.input[0]].op_type for r in relus] == ["Conv"]  # only the FP32 stem's ReLU is left


def test_int8_on_the_cpu_runs_without_qdq_propagation_and_gives_the_same_outputs(fp32, dataset, tmp_path):
    import onnxruntime as ort

    assert disabled_optimizers("int8", ["CPUExecutionProvider"]) == ["QDQPropagationTransformer"]
    assert disabled_optimizers("fp32", ["CPUExecutionProvider"]) is None
    assert disabled_optimizers("int8", ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    ds = open_dataset(dataset)
    path = tmp_path / "q.onnx"
    quantize_onnx(fp32, path, sample_tiles(ds, ds.split["train"], 4, 64, seed=0), Int8Options(**FAST))
    tiles = sample_tiles(ds, ds.split["val"], 4, 64, seed=1)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    kept = ort.InferenceSession(
        str(path), providers=["CPUExecutionProvider"], disabled_optimizers=["QDQPropagationTransformer"]
    )
    for a, b in zip(plain.run(None, {"image": tiles}), kept.run(None, {"image": tiles}), strict=True):
        np.testing.assert_array_equal(a, b)
