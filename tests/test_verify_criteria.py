"""Each export verification criterion, alone, refuses an export that breaks only it (export/verify.py).

The model under test is a tiny hand-built ONNX graph with the deployed contract (uint8 NHWC image in; labels,
probs, class_scores out at stride 8). The "torch reference" is a stand-in that returns that graph's own outputs
with one controlled change, so each test breaks exactly one figure by a known amount, or stays just inside it.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from segcls.core.errors import ExportError
from segcls.export.verify import (
    FP16_MIN_AGREEMENT,
    FP16_SCORES_TOL,
    FP32_MIN_AGREEMENT,
    FP32_PROBS_ATOL,
    Figure,
    float32_compute,
    tissue_like_images,
    verify_onnx,
)

SIZE = 256  # a 32 x 32 label map per image: one flipped label is 0.1 % of it
SCALE = (1 / 255, 1.0, 0.1)  # class 0 scores in [0, 1], class 1 up to 255: both tolerance regimes


def tiny_model(path, labels_type=TensorProto.UINT8):
    """8 x 8 average pooling of the RGB pixels as 3 class logits; softmax, argmax and a scaled max over space."""
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["nchw"], ["logits"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["argmax"], axis=1, keepdims=0),
        helper.make_node("Cast", ["argmax"], ["labels"], to=labels_type),
        helper.make_node("ReduceMax", ["logits"], ["max"], axes=[2, 3], keepdims=0),
        helper.make_node("Mul", ["max", "scale"], ["class_scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["B", "H", "W", 3])],
        [
            helper.make_tensor_value_info("labels", labels_type, ["B", "h", "w"]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["B", 3, "h", "w"]),
            helper.make_tensor_value_info("class_scores", TensorProto.FLOAT, ["B", 3]),
        ],
        [helper.make_tensor("scale", TensorProto.FLOAT, [1, 3], list(SCALE))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


class Reference:
    """Stands in for the torch DeployedModel: the ONNX model's outputs, then one change.

    flip: share of each image's labels changed to another class; probs_diff: added to one probability;
    scores_rel: added to every class-0 score as that multiple of max(1, |score|); big_scores_diff: added to
    every class-1 score (scores > 50, so it stays small relative to them).
    """

    def __init__(self, path, flip=0.0, probs_diff=0.0, scores_rel=0.0, big_scores_diff=0.0, shape_change=False):
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.flip, self.probs_diff, self.scores_rel = flip, probs_diff, scores_rel
        self.big_scores_diff, self.shape_change = big_scores_diff, shape_change

    def __call__(self, images: torch.Tensor):
        labels, probs, scores = self.session.run(None, {"image": images.numpy()})
        labels, probs, scores = labels.astype(np.int64), probs.copy(), scores.copy()
        per_image = labels[0].size
        n = round(self.flip * per_image)
        flat = labels.reshape(len(labels), -1)
        flat[:, :n] = (flat[:, :n] + 1) % 3
        probs[0, 0, 0, 0] += self.probs_diff
        assert (scores[:, 1] > 50).all() and (np.abs(scores[:, 0]) <= 1).all()
        scores[:, 0] += self.scores_rel * np.maximum(1, np.abs(scores[:, 0]))
        scores[:, 1] += self.big_scores_diff
        if self.shape_change:
            probs = probs[:, :, :-1]
        return torch.from_numpy(flat.reshape(labels.shape)), torch.from_numpy(probs), torch.from_numpy(scores)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("verify") / "tiny.onnx")


def verify(model, precision, **change):
    return verify_onnx(model, Reference(model, **change), precision, size=SIZE)


PROBS, AGREEMENT, SCORES = "probs max|diff|", "labels agreement", "class_scores max|diff|/max(1,|score|)"


def figures(report) -> dict[str, Figure]:
    return {f.name: f for f in report.figures}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_model_itself_passes(model, precision):
    report = verify(model, precision)
    assert report.passed and len(report.cases) == 4
    assert figures(report)[AGREEMENT].value == 1.0
    report.raise_if_failed(model)  # no error


def test_tolerances_are_the_documented_ones():
    """The figures of the module docstring and docs (the tests below probe each one from both sides)."""
    assert (FP32_PROBS_ATOL, FP32_MIN_AGREEMENT, FP16_MIN_AGREEMENT, FP16_SCORES_TOL) == (1e-4, 0.999, 0.995, 1e-2)


@pytest.mark.parametrize(("diff", "passes"), [(2e-4, False), (0.5e-4, True)])
def test_fp32_probs_tolerance_alone(model, diff, passes):
    report = verify(model, "fp32", probs_diff=diff)
    figs = figures(report)
    assert figs[PROBS].value == pytest.approx(diff, rel=1e-2)
    assert figs[PROBS].passed is passes and figs[AGREEMENT].passed  # labels untouched
    assert report.passed is passes


@pytest.mark.parametrize(("flip", "passes"), [(0.002, False), (0.001, True)])
def test_fp32_labels_agreement_alone(model, flip, passes):
    report = verify(model, "fp32", flip=flip)
    figs = figures(report)
    worst = max(round(flip * n) / n for n in (32 * 32, 32 * 40))  # label maps of the square and wide cases
    assert figs[AGREEMENT].value == pytest.approx(1 - worst)
    assert figs[AGREEMENT].passed is passes and figs[PROBS].passed
    assert report.passed is passes
    if not passes:
        with pytest.raises(ExportError, match="failed verification: labels agreement") as e:
            report.raise_if_failed("m.onnx")
        assert "probs" not in str(e.value)  # only the failed figure is named


def test_fp32_does_not_judge_class_scores(model):
    report = verify(model, "fp32", scores_rel=0.5)
    assert report.passed and report.info["class_scores max|diff|"] == pytest.approx(0.5, rel=1e-3)


@pytest.mark.parametrize(("flip", "passes"), [(0.01, False), (0.004, True)])
def test_fp16_labels_agreement_alone(model, flip, passes):
    report = verify(model, "fp16", flip=flip)
    figs = figures(report)
    assert figs[AGREEMENT].passed is passes and figs[SCORES].passed
    assert report.passed is passes
    assert not verify(model, "fp32", flip=0.004).passed  # FP32 asks more of the labels than FP16


@pytest.mark.parametrize(("rel", "passes"), [(2e-2, False), (0.5e-2, True)])
def test_fp16_class_scores_tolerance_alone(model, rel, passes):
    """Class-0 scores lie in [0, 1], where the tolerance is 1e-2 absolute."""
    report = verify(model, "fp16", scores_rel=rel)
    figs = figures(report)
    assert rel / 1.05 <= figs[SCORES].value <= rel * 1.001  # rel / max(1, |score + rel|), scores < 0.98
    assert figs[SCORES].passed is passes and figs[AGREEMENT].passed
    assert report.passed is passes


def test_fp16_class_scores_tolerance_is_relative_above_one(model):
    """Scores of 50..255 off by 0.5: 50x the absolute 1e-2, but under 1 % of the score, as FP16 rounding is."""
    report = verify(model, "fp16", big_scores_diff=0.5)
    assert report.passed
    assert report.info["class_scores max|diff|"] == pytest.approx(0.5, rel=1e-3)
    assert figures(report)[SCORES].value < 1e-2
    assert not verify(model, "fp16", big_scores_diff=5.0).passed  # >= 2 % of a score of at most 255


def test_fp16_does_not_judge_probs(model):
    report = verify(model, "fp16", probs_diff=1e-2)
    assert report.passed and report.info["probs max|diff|"] == pytest.approx(1e-2, rel=1e-2)


def test_outputs_of_another_shape_or_type_are_an_error(model, tmp_path):
    with pytest.raises(ExportError, match="output 'probs' has shape"):
        verify(model, "fp32", shape_change=True)
    int_labels = tiny_model(tmp_path / "int.onnx", labels_type=TensorProto.INT64)
    with pytest.raises(ExportError, match="output 'labels' is int64, expected uint8"):
        verify_onnx(int_labels, Reference(int_labels), "fp32", size=SIZE)


def test_a_file_onnx_runtime_cannot_load_is_an_error(tmp_path, model):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="ONNX Runtime cannot load"):
        verify_onnx(junk, Reference(model), "fp32", size=SIZE)


def test_figure_limits_are_inclusive_and_printed():
    assert Figure("x", 1e-4, 1e-4).passed and not Figure("x", 1.01e-4, 1e-4).passed
    assert Figure("a", 0.999, 0.999, higher_is_better=True).passed
    assert not Figure("a", 0.998, 0.999, higher_is_better=True).passed
    assert str(Figure("a", 0.998, 0.999, higher_is_better=True)) == "a 0.998 (FAIL, needs >= 0.999)"
    assert str(Figure("p", 5e-5, 1e-4)) == "p 5e-05 (ok, needs <= 0.0001)"


def test_float32_compute_names_the_float_nodes_but_cast_and_reducemax(model):
    """An FP32 graph: every float-producing node but Cast and ReduceMax is listed, by name or first output."""
    proto = onnx.load(str(model))
    proto.graph.node[1].name = "to_nchw"
    assert float32_compute(proto) == [
        "Transpose:to_nchw",
        "AveragePool:logits",
        "Softmax:probs",
        "Mul:class_scores",
    ]


def test_cases_are_random_and_tissue_like_pixels_at_two_batch_sizes_and_shapes(model):
    """What the reference is run on: random pixels and tissue-like tiles (mostly bright, H&E-ish), batches of
    1 and 3, square and not square."""
    seen = []

    class Recording(Reference):
        def __call__(self, images):
            seen.append(images.numpy().copy())
            return super().__call__(images)

    report = verify_onnx(model, Recording(model), "fp32", size=64)
    assert report.cases == ["random 1x64x64", "tissue 1x64x128", "random 3x64x64", "tissue 3x64x128"]
    assert [s.shape for s in seen] == [(1, 64, 64, 3), (1, 64, 128, 3), (3, 64, 64, 3), (3, 64, 128, 3)]
    for kind, images in zip(["random", "tissue"] * 2, seen, strict=True):
        if kind == "random":  # uniform over 0..255
            assert images.min() <= 5 and images.max() >= 250 and abs(images.mean() - 127.5) < 10
        else:  # white background and pink tissue: bright on average, few dark pixels
            assert images.mean() > 170 and (images.mean(-1) < 60).mean() < 0.2


def test_tissue_like_images_look_like_h_and_e():
    """White background, pink stroma and dark purple nuclei in every image, in plausible shares."""
    images = tissue_like_images(4, 128, 192, np.random.default_rng(0))
    assert images.shape == (4, 128, 192, 3) and images.dtype == np.uint8
    r, g, b = (images[..., c].astype(int) for c in range(3))
    background = images.min(-1) > 225
    stroma = (r > 210) & (g < 190) & (b > g)
    nuclei = (b > r) & (r > g) & (images.mean(-1) < 130)
    for share, low, high in ((background, 0.15, 0.5), (stroma, 0.4, 0.8), (nuclei, 0.02, 0.12)):
        assert (low < share.mean(axis=(1, 2))).all() and (share.mean(axis=(1, 2)) < high).all()
