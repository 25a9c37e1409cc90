import pytest
import torch

from segcls.core.errors import CheckpointError
from segcls.model import ResNet18Encoder, SegClsNet, build_model, classification_layer, load_pretrained_encoder


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


def _torchvision_resnet18_state(encoder: ResNet18Encoder) -> dict:
    """Keys as torchvision's resnet18 state dict has them: the encoder's plus layer4 and fc."""
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in encoder.state_dict().items()}
    state["layer4.0.conv1.weight"] = torch.randn(512, 256, 3, 3)
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    return state


def test_pretrained_loads_torchvision_keys(tmp_path):
    encoder = ResNet18Encoder()
    state = _torchvision_resnet18_state(encoder)
    torch.save(state, tmp_path / "resnet18.pth")
    model = build_model(3, pretrained=tmp_path / "resnet18.pth")
    torch.testing.assert_close(model.encoder.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    torch.testing.assert_close(model.encoder.bn1.running_var, state["bn1.running_var"])


def test_pretrained_rejects_missing_or_unexpected_keys(tmp_path):
    encoder = ResNet18Encoder()
    state = _torchvision_resnet18_state(encoder)
    del state["layer2.0.downsample.0.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="1 missing"):
        load_pretrained_encoder(encoder, tmp_path / "missing.pth")
    state = _torchvision_resnet18_state(encoder)
    state["head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_pretrained_encoder(encoder, tmp_path / "extra.pth")


def test_pretrained_rejects_non_checkpoint(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_pretrained_encoder(ResNet18Encoder(), tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained_encoder(ResNet18Encoder(), tmp_path / "nope.pth")
