"""Training augmentation in torch, batched: the paper's rotations and colour jitter, then normalisation.

- Geometry (image and mask together): one of the 8 symmetries of the square per tile, a random
  horizontal flip then a random multiple of 90 degrees.
- Colour (image only), per tile: brightness, contrast, saturation and hue factors drawn as in
  torchvision's ColorJitter (brightness b in [1 - .25, 1 + .25], contrast [1 - .75, 1 + .75], saturation
  [1 - .25, 1 + .25], hue shift in [-.04, .04] of a turn), applied in that fixed order. Each step is
  linear in RGB, so the four compose into one 3x3 matrix + offset per tile, applied with one batched
  matmul and clamped to [0, 1] once; torchvision clamps after every step, so pixels pushed past white
  and pulled back by a later step differ slightly. Hue is a rotation of the chroma plane in YIQ space
  (not an RGB -> HSV round trip): it keeps luma and is close to an HSV hue shift for moderate angles.
- Stain (image only, off unless `hed` > 0), before the colour jitter: HED jitter after Tellez et al. 2019
  ("Quantifying the effects of data augmentation and stain color normalization...", MedIA 58). Each tile
  is unmixed into haematoxylin, eosin and DAB concentrations with Ruifrok & Johnston's stain matrix
  (scikit-image's rgb_from_hed), each concentration c becomes alpha * c + beta with alpha ~ U(1 - hed,
  1 + hed) and beta ~ U(-hed, hed) drawn per tile and stain, and the tile is mixed back. Optical density
  is Beer-Lambert's natural-log one, OD = -ln(I / 255), so beta is in those units. (scikit-image >= 0.19
  divides OD by -ln(1e-6) = 13.8 before unmixing, which makes the same beta 13.8 times stronger; its
  older versions differ again. Tellez et al. name hed = 0.05 "HED-light" and 0.2 "HED-strong".)
  Unmixing and mixing are linear in OD, so the whole change is one 3x3 matrix + offset per tile (no
  clipping of negative concentrations in between: alpha = 1, beta = 0 give the tile back). Strength, measured
  on 128-px synthetic H&E tiles of segcls-synth, mean (95th percentile) change of a pixel channel in grey
  levels: hed 0.05: 4.5 (10), 0.1: 8.6 (20), 0.2: 16 (38); one draw of the colour jitter above: 25 (60).
- Normalisation: `(rgb / 255 - mean) / std` (`segcls.core.description`).
All randomness comes from the `generator` passed in, so a seeded generator gives the same batch (and
hed = 0 draws nothing: the batches of a run without it are those of earlier versions). A torchrun rank
augments only its share of a global batch (`share`, `batch_size`): it takes the whole batch's random draws
and keeps its rows', so its tiles come out as they would from augmenting the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# NTSC RGB -> YIQ. The Y row is the luma used for contrast and saturation; the I and Q rows sum to 0.
_RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.596, -0.274, -0.322),
    (0.211, -0.523, 0.312),
)
# Ruifrok & Johnston's optical-density vectors of haematoxylin, eosin and DAB (rows), scikit-image's
# rgb_from_hed; and the transmission a black pixel is read as (half a grey level), so its OD is finite.
RGB_FROM_HED = (
    (0.65, 0.70, 0.29),
    (0.07, 0.99, 0.11),
    (0.27, 0.57, 0.78),
)
_OD_FLOOR = 0.5 / 255


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, H, W, 3) RGB -> float32 (B, 3, H, W), `(rgb / 255 - mean) / std`."""
    return _standardize(_to_nchw(images), mean, std, scale=1 / 255)


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator | None,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    share: slice | None = None,
    batch_size: int | None = None,
    geometry: bool = True,
    brightness: float = 0.25,
    contrast: float = 0.75,
    saturation: float = 0.25,
    hue: float = 0.04,
    hed: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, T, T, 3) tiles + uint8 (B, T, T) masks -> normalised float32 (B, 3, T, T), int64 (B, T, T).

    `hed` is the HED jitter's strength (module docstring; 0 = off, 0.05 = Tellez et al.'s HED-light). With
    `share`, the tiles are the rows `share` of a batch of `batch_size` (draws for all, rows for these)."""
    if images.ndim != 4 or images.shape[-1] != 3 or masks.shape != images.shape[:3]:
        raise ValueError(f"expected images (B, T, T, 3) and masks (B, T, T), got {images.shape} and {masks.shape}")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"tiles must be square for 90-degree rotations, got {images.shape[1]}x{images.shape[2]}")
    n, rows = len(images), slice(None)
    if share is not None:
        n, rows = batch_size, share
        if batch_size is None or len(range(batch_size)[share]) != len(images):
            raise ValueError(f"{len(images)} tiles are not the rows {share} of a batch of {batch_size}")
    if geometry:
        images, masks = _dihedral(images, masks, _randint(8, n, generator, images.device)[rows])
    x = _to_nchw(images)
    if hed > 0:
        x = _hed_mix(x, *(f[rows] for f in _hed_factors(n, generator, images.device, hed)))
    factors = [f[rows] for f in _jitter_factors(n, generator, images.device, brightness, contrast, saturation, hue)]
    x = _jitter(x, *factors)
    return _standardize(x, mean, std), masks.to(torch.int64)


def _to_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> contiguous float32 NCHW with values 0..255, in one pass."""
    b, h, w, _ = images.shape
    x = torch.empty((b, 3, h, w), dtype=torch.float32, device=images.device)
    return x.copy_(images.permute(0, 3, 1, 2))


def _standardize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], scale: float = 1.0) -> torch.Tensor:
    """In place: `(x * scale - mean) / std` as one multiply and one add."""
    mean_t = torch.as_tensor(mean, dtype=torch.float64)
    std_t = torch.as_tensor(std, dtype=torch.float64)
    mul = (scale / std_t).to(x.dtype).to(x.device).view(1, 3, 1, 1)
    add = (-mean_t / std_t).to(x.dtype).to(x.device).view(1, 3, 1, 1)
    return x.mul_(mul).add_(add)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else "cpu"
    return (torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64) * (high - low) + low).to(device)


def _randint(high: int, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randint(high, (n,), generator=generator, device=gen_device).to(device)


def _dihedral(images: torch.Tensor, masks: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Code c: flip left-right if c >= 4, then rotate by (c % 4) * 90 degrees; tiles grouped by code."""
    out_images, out_masks = torch.empty_like(images), torch.empty_like(masks)
    for code in codes.unique().tolist():
        idx = (codes == code).nonzero().squeeze(1)
        img, msk = images[idx], masks[idx]
        if code >= 4:
            img, msk = img.flip(2), msk.flip(2)
        out_images[idx] = torch.rot90(img, code % 4, dims=(1, 2))
        out_masks[idx] = torch.rot90(msk, code % 4, dims=(1, 2))
    return out_images, out_masks


def hed_jitter(x: torch.Tensor, generator: torch.Generator | None, strength: float) -> torch.Tensor:
    """HED jitter of float (B, 3, H, W) with values 0..255 -> the same range (see the module docstring)."""
    return _hed_mix(x, *_hed_factors(len(x), generator, x.device, strength))


def _hed_factors(
    n: int, generator: torch.Generator | None, device, strength: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-stain scale (alpha) and shift (beta) draws of `n` tiles, (n, 3) each (float64)."""
    alpha = _uniform(3 * n, 1 - strength, 1 + strength, generator, device).view(n, 3)
    beta = _uniform(3 * n, -strength, strength, generator, device).view(n, 3)
    return alpha, beta


def _hed_mix(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Unmix each tile into stain concentrations, scale + shift them, mix back: one 3x3 matrix + offset."""
    n, device = len(x), x.device
    mix = torch.tensor(RGB_FROM_HED, dtype=torch.float64, device=device)  # concentrations (row) @ mix = OD
    # Row vectors: od' = (od @ mix^-1 * alpha + beta) @ mix = od @ (mix^-1 diag(alpha) mix) + beta @ mix.
    matrix = (torch.linalg.inv(mix) @ (alpha[:, :, None] * mix)).transpose(1, 2).to(x.dtype)
    offset = (beta @ mix).to(x.dtype)[:, :, None]
    od = x.reshape(n, 3, -1).div(255).clamp_(min=_OD_FLOOR).log_().neg_()
    od = torch.baddbmm(offset, matrix, od)
    return od.neg_().exp_().mul_(255).clamp_(0, 255).view_as(x)


def _jitter_factors(
    n: int, generator: torch.Generator | None, device, brightness: float, contrast: float, saturation: float, hue: float
) -> tuple[torch.Tensor, ...]:
    """The brightness, contrast, saturation and hue draws of `n` tiles (float64), in that order."""
    b = _uniform(n, max(0.0, 1 - brightness), 1 + brightness, generator, device)
    c = _uniform(n, max(0.0, 1 - contrast), 1 + contrast, generator, device)
    s = _uniform(n, max(0.0, 1 - saturation), 1 + saturation, generator, device)
    h = _uniform(n, -hue, hue, generator, device)
    return b, c, s, h


def _jitter(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Colour jitter of float (B, 3, H, W) with values 0..255 -> [0, 1], one affine map per tile from its
    factors (see the module docstring)."""
    n, device = len(x), x.device
    yiq = torch.tensor(_RGB_TO_YIQ, dtype=torch.float64, device=device)
    luma = yiq[0]
    # Saturation: s * p + (1 - s) * luma(p), i.e. s * I + (1 - s) * 1 luma^T.
    sat = s.view(n, 1, 1) * torch.eye(3, dtype=torch.float64, device=device) + (1 - s).view(n, 1, 1) * luma.expand(3, 3)
    # Hue: rotate (I, Q) by -2 pi h (that direction moves red towards green, as a positive HSV shift does).
    cos, sin = torch.cos(2 * math.pi * h), torch.sin(2 * math.pi * h)
    rot = torch.zeros(n, 3, 3, dtype=torch.float64, device=device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, sin, -sin, cos
    hue_m = torch.linalg.inv(yiq) @ rot @ yiq
    # Brightness scales by b; contrast blends with the mean luma of the brightened tile, b * m0.
    # Saturation and hue map grey to itself, so the contrast offset passes through them unchanged.
    m0 = x.mean(dim=(2, 3)).to(torch.float64) @ luma / 255
    matrix = ((c * b / 255).view(n, 1, 1) * (hue_m @ sat)).to(x.dtype)
    offset = ((1 - c) * b * m0).to(x.dtype).view(n, 1, 1)
    out = torch.baddbmm(offset, matrix, x.reshape(n, 3, -1))
    return out.clamp_(0, 1).view_as(x)
