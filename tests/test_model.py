import pytest
import torch

from segcls.model import SegClsNet, build_model, classification_layer


@pytest.fixture(scope="module")
def model() -> SegClsNet:
    torch.manual_seed(0)
    return build_model(4).eval()


@pytest.mark.parametrize("size", [(64, 64), (128, 96), (224, 320)])
def test_shapes_and_stride(model, size):
    h, w = size
    out = model(torch.randn(2, 3, h, w))
    assert out.low_res_logits.shape == (2, 4, h // 8, w // 8)
    assert out.class_scores.shape == (2, 4)
    assert out.logits.shape == (2, 4, h, w)


def test_full_res_is_nearest_upsampling_of_low_res(model):
    out = model(torch.randn(1, 3, 64, 64))
    expected = out.low_res_logits.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=0)


def test_classification_layer_is_global_max_of_low_res_logits(model):
    out = model(torch.randn(3, 3, 96, 64))
    expected = out.low_res_logits.flatten(2).max(dim=2).values
    torch.testing.assert_close(out.class_scores, expected, rtol=0, atol=0)
    assert list(classification_layer(torch.arange(8.0).view(1, 2, 2, 2))[0]) == [3.0, 7.0]


def test_full_res_can_be_skipped(model):
    out = model(torch.randn(1, 3, 64, 64), full_res=False)
    assert out.logits is None


def test_no_parameters_beyond_encoder_and_decoder(model):
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names == {"encoder", "decoder"}
    assert not any(n.startswith("encoder.layer4") for n, _ in model.named_parameters())
