import pytest
import torch

from segcls.core.description import IMAGENET_MEAN, IMAGENET_STD
from segcls.data.augment import augment_batch, normalize

NO_JITTER = {"brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}
IDENTITY = ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # mean, std that give back 0..255


def _batch(b=64, t=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, t, t, 3), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, 4, (b, t, t), dtype=torch.uint8, generator=g)
    return images, masks


def _dihedral(x):
    """The 8 symmetries of the square of an (T, T, ...) tensor."""
    return [torch.rot90(y, k, dims=(0, 1)) for y in (x, x.flip(1)) for k in range(4)]


def test_geometry_keeps_image_and_mask_aligned():
    t = 16
    yy, xx = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    masks = ((yy * t + xx) % 250).to(torch.uint8).expand(64, t, t).clone()
    masks[::2] = 249 - masks[::2]
    # the image encodes the mask (red) and the pixel position (green, blue)
    images = torch.stack([masks, yy.to(torch.uint8).expand(64, t, t), xx.to(torch.uint8).expand(64, t, t)], -1)
    out, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(0), *IDENTITY, **NO_JITTER)
    assert out.shape == (64, 3, t, t) and out.dtype == torch.float32
    assert out_masks.shape == (64, t, t) and out_masks.dtype == torch.int64
    restored = out.round().to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(restored[..., 0].long(), out_masks)
    used = set()
    for i in range(64):
        options = _dihedral(images[i])
        matches = [k for k, o in enumerate(options) if torch.equal(o, restored[i])]
        assert len(matches) == 1
        assert torch.equal(_dihedral(masks[i])[matches[0]].long(), out_masks[i])
        used.add(matches[0])
    assert used == set(range(8))  # all symmetries occur in a batch of 64


def test_normalize_inverts():
    images, _ = _batch()
    x = normalize(images, IMAGENET_MEAN, IMAGENET_STD)
    assert x.shape == (64, 3, 16, 16) and x.dtype == torch.float32 and x.is_contiguous()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    back = ((x * std + mean) * 255).permute(0, 2, 3, 1)
    assert torch.allclose(back, images.float(), atol=1e-3)
    assert x[:, 0].mean() != x[:, 1].mean()  # channels were not mixed up with the mean of another


def test_zero_jitter_is_identity():
    images, masks = _batch()
    out, out_masks = augment_batch(images, masks, None, IMAGENET_MEAN, IMAGENET_STD, geometry=False, **NO_JITTER)
    assert torch.allclose(out, normalize(images, IMAGENET_MEAN, IMAGENET_STD), atol=1e-5)
    assert torch.equal(out_masks, masks.long())


def test_generator_determinism():
    images, masks = _batch()
    a = augment_batch(images, masks, torch.Generator().manual_seed(3), IMAGENET_MEAN, IMAGENET_STD)
    b = augment_batch(images, masks, torch.Generator().manual_seed(3), IMAGENET_MEAN, IMAGENET_STD)
    c = augment_batch(images, masks, torch.Generator().manual_seed(4), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_brightness_scales_each_tile():
    images, masks = _batch(b=32)
    images = images // 2 + 40  # 40..167: no clipping at a factor of 1.25
    jitter = {**NO_JITTER, "brightness": 0.25}
    out, _ = augment_batch(images, masks, torch.Generator().manual_seed(0), *IDENTITY, geometry=False, **jitter)
    before = normalize(images, *IDENTITY)
    factors = out.sum(dim=(1, 2, 3)) / before.sum(dim=(1, 2, 3))
    assert torch.allclose(out, factors.view(32, 1, 1, 1) * before, atol=1e-3)  # one factor per tile
    assert factors.min() >= 0.75 - 1e-6 and factors.max() <= 1.25 + 1e-6
    assert factors.std() > 0.05


def test_colour_jitter_stays_in_range_and_keeps_grey():
    images, masks = _batch()
    out, _ = augment_batch(images, masks, torch.Generator().manual_seed(1), *IDENTITY)
    assert out.min() >= 0 and out.max() <= 255 + 1e-3
    assert not torch.allclose(out, normalize(images, *IDENTITY), atol=1)
    grey = torch.arange(64, dtype=torch.uint8).mul(4).view(64, 1, 1, 1).expand(64, 4, 4, 3).contiguous()
    hue_sat = {**NO_JITTER, "saturation": 1.0, "hue": 0.5}
    out, _ = augment_batch(grey, grey[..., 0], torch.Generator().manual_seed(2), *IDENTITY, **hue_sat)
    assert torch.allclose(out, normalize(grey, *IDENTITY), atol=1e-2)  # grey has no hue or saturation


def test_hue_keeps_luma_and_changes_colour():
    images, masks = _batch()
    hue = {**NO_JITTER, "hue": 0.04}
    out, _ = augment_batch(images // 2 + 64, masks, torch.Generator().manual_seed(0), *IDENTITY, geometry=False, **hue)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    before = normalize(images // 2 + 64, *IDENTITY)
    assert torch.allclose((out * luma).sum(1), (before * luma).sum(1), atol=1e-2)
    assert (out - before).abs().max() > 1


def test_bad_shapes():
    images, masks = _batch(t=16)
    with pytest.raises(ValueError, match="square"):
        augment_batch(images[:, :8], masks[:, :8], None, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="expected images"):
        augment_batch(images, masks[:, :8], None, IMAGENET_MEAN, IMAGENET_STD)


def _hed_by_steps(rgb, alpha, beta):
    """The HED jitter pixel by pixel, step by step: unmix, scale + shift each stain, mix (numpy, float64)."""
    import numpy as np

    from segcls.data.augment import RGB_FROM_HED

    mix = np.array(RGB_FROM_HED)
    od = -np.log(np.maximum(rgb.astype(np.float64) / 255, 0.5 / 255))  # (..., 3)
    concentrations = np.linalg.solve(mix.T, od.reshape(-1, 3).T).T  # c @ mix = od
    jittered = concentrations * alpha + beta
    return np.clip(255 * np.exp(-(jittered @ mix)), 0, 255).reshape(rgb.shape)


def test_hed_jitter_is_unmix_scale_shift_mix():
    import numpy as np

    from segcls.data.augment import _uniform, hed_jitter

    images, _ = _batch(b=6, t=8, seed=4)
    x = images.permute(0, 3, 1, 2).to(torch.float32)
    out = hed_jitter(x.clone(), torch.Generator().manual_seed(9), 0.2)
    # the same draws, in the same order, as hed_jitter takes them
    g = torch.Generator().manual_seed(9)
    alpha = _uniform(18, 0.8, 1.2, g, "cpu").view(6, 3).numpy()
    beta = _uniform(18, -0.2, 0.2, g, "cpu").view(6, 3).numpy()
    for i in range(6):
        expected = _hed_by_steps(images[i].numpy(), alpha[i], beta[i])
        assert np.abs(out[i].permute(1, 2, 0).numpy() - expected).max() < 1e-2
    assert (out - x).abs().mean() > 5  # strong jitter moves pixels


def test_hed_jitter_identity_draws_give_the_tile_back():
    images, _ = _batch(b=4, t=8, seed=5)
    x = images.permute(0, 3, 1, 2).to(torch.float32)
    from segcls.data.augment import hed_jitter

    out = hed_jitter(x.clone(), torch.Generator().manual_seed(0), 1e-9)
    lit = x > 0  # a black pixel is read as half a grey level (a finite optical density)
    assert (out - x)[lit].abs().max() < 1e-3 and (out - x)[~lit].abs().max() <= 0.5 + 1e-3


def test_hed_off_draws_nothing_and_on_changes_colour_only():
    images, masks = _batch(b=8, t=16, seed=6)
    plain = augment_batch(images, masks, torch.Generator().manual_seed(1), *IDENTITY)
    off = augment_batch(images, masks, torch.Generator().manual_seed(1), *IDENTITY, hed=0.0)
    on = augment_batch(images, masks, torch.Generator().manual_seed(1), *IDENTITY, hed=0.1)
    assert torch.equal(plain[0], off[0]) and torch.equal(plain[1], off[1])
    assert torch.equal(on[1], plain[1])  # the geometry draws come first: masks are unchanged
    assert not torch.allclose(on[0], plain[0])
    repeat = augment_batch(images, masks, torch.Generator().manual_seed(1), *IDENTITY, hed=0.1)
    assert torch.equal(on[0], repeat[0])


@pytest.mark.parametrize("hed", [0.0, 0.1])
def test_a_share_is_augmented_as_in_the_whole_batch(hed):
    """A torchrun rank augments only its rows, with the whole batch's draws: the rows one process makes."""
    images, masks = _batch(b=8)
    whole = augment_batch(images, masks, torch.Generator().manual_seed(5), IMAGENET_MEAN, IMAGENET_STD, hed=hed)
    for share in (slice(0, None, 2), slice(1, None, 2), slice(0, None, 4), slice(0, None, 1)):
        part = augment_batch(
            images[share], masks[share], torch.Generator().manual_seed(5), IMAGENET_MEAN, IMAGENET_STD,
            share=share, batch_size=8, hed=hed,
        )  # fmt: skip
        torch.testing.assert_close(part[0], whole[0][share], rtol=0, atol=1e-6)
        assert torch.equal(part[1], whole[1][share])
    with pytest.raises(ValueError, match=r"3 tiles are not the rows slice\(0, None, 2\) of a batch of 8"):
        augment_batch(images[:3], masks[:3], None, IMAGENET_MEAN, IMAGENET_STD, share=slice(0, None, 2), batch_size=8)
