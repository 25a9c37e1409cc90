import numpy as np
import pytest

from segcls.core.metrics import ConfusionMatrix, bach_score, pixel_scores


def test_f1_per_class_macro_micro_by_hand():
    target = np.array([0, 0, 0, 1, 1, 2, 255])
    pred = np.array([0, 0, 1, 1, 2, 2, 0])
    s = pixel_scores(target, pred, 3)
    # class 0: tp2 fp0 fn1 -> 4/5; class 1: tp1 fp1 fn1 -> 1/2; class 2: tp1 fp1 fn0 -> 2/3
    assert s.per_class_f1 == pytest.approx([0.8, 0.5, 2 / 3])
    assert s.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert s.micro_f1 == pytest.approx(4 / 6)  # pixel accuracy over labelled pixels
    assert s.pixels == 6


def test_absent_class_is_left_out_of_macro():
    s = pixel_scores(np.array([0, 0, 1]), np.array([0, 0, 1]), 3)
    assert np.isnan(s.per_class_f1[2])
    assert s.macro_f1 == 1.0
    assert s.to_dict(["a", "b", "c"])["per_class_f1"]["c"] is None


def test_accumulation_equals_pooled():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, (2, 1000))
    cm = ConfusionMatrix(4)
    cm.update(t[:400], p[:400])
    cm.update(t[400:], p[400:])
    assert np.array_equal(cm.matrix, ConfusionMatrix(4).matrix + pixel_scores_matrix(t, p))


def pixel_scores_matrix(t, p):
    m = np.zeros((4, 4), np.int64)
    np.add.at(m, (t, p), 1)
    return m


def test_out_of_range_label_is_an_error():
    with pytest.raises(ValueError, match="< 3"):
        pixel_scores(np.array([3]), np.array([0]), 3)


def test_bach_score():
    g = np.array([0, 1, 2, 3])
    assert bach_score(g, g) == 1.0
    # predicting normal everywhere: sum|p-g| = 6, denominator over g>0 pixels: 2 + 2 + 3 = 7
    assert bach_score(g, np.zeros(4, int)) == pytest.approx(1 - 6 / 7)
    assert bach_score(np.zeros(4, int), np.zeros(4, int)) == 1.0


@pytest.mark.parametrize(
    ("target", "pred"), [([3], [0]), ([0], [3]), ([4], [0]), ([0], [4]), ([256], [0]), ([0], [300])]
)
def test_labels_that_are_no_class_are_an_error_in_target_and_prediction(target, pred):
    with pytest.raises(ValueError, match="labels must be < 3"):
        pixel_scores(np.array(target), np.array(pred), 3)


@pytest.mark.parametrize(("n_target", "n_pred"), [(3, 4), (4, 3)])
def test_different_pixel_counts_are_an_error(n_target, n_pred):
    with pytest.raises(ValueError, match=f"target has {n_target} pixels, prediction {n_pred}"):
        pixel_scores(np.zeros(n_target, int), np.zeros(n_pred, int), 2)


def test_unlabelled_prediction_pixels_are_ignored_too():
    """255 in the prediction (not tissue) is left out like 255 in the target, not scored as a wrong class."""
    s = pixel_scores(np.array([0, 1, 1, 255]), np.array([0, 255, 1, 1]), 2)
    assert s.pixels == 2 and s.macro_f1 == 1.0 and s.micro_f1 == 1.0


def test_a_class_seen_once_counts_in_macro():
    """A class predicted on a single pixel and absent from the target has F1 0, and pulls macro F1 down."""
    s = pixel_scores(np.array([0, 0]), np.array([0, 1]), 3)
    assert s.per_class_f1[:2] == pytest.approx([2 / 3, 0.0]) and np.isnan(s.per_class_f1[2])
    assert s.macro_f1 == pytest.approx(1 / 3)


def test_to_dict_needs_one_name_per_class():
    s = pixel_scores(np.array([0, 1]), np.array([0, 1]), 2)
    assert s.to_dict(["a", "b"])["per_class_f1"] == {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError):
        s.to_dict(["a"])


def test_bach_score_false_positives_on_normal_and_ignored_pixels():
    g = np.array([0, 0, 0, 1, 2, 255, 3])
    p = np.array([0, 1, 3, 2, 2, 3, 255])
    # kept: g 0 0 0 1 2, p 0 1 3 2 2; sum|p-g| = 0+1+3+1+0 = 5; either positive: 0 1 1 1 1;
    # max(|g|, |g-3|): 3 3 3 2 2 -> denominator 3+3+2+2 = 10
    assert bach_score(g, p) == pytest.approx(1 - 5 / 10)
    assert bach_score(np.array([0, 0, 255]), np.array([0, 0, 2])) == 1.0  # no positive pixel is kept
