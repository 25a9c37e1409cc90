"""An H&E-like appearance model of four tissue classes, defined in microns.

Each class is a recipe for haematoxylin and eosin densities (Beer-Lambert optical density, stain vectors
after Ruifrok & Johnston); the classes differ in texture more than in colour, in two look-alike pairs:
stroma and necrosis are both eosin-pink (oriented fibres with spindle nuclei vs granular debris), benign
and tumor both purple (glands with lumens and a rim of small nuclei vs crowded large nuclei in nests).
Region shapes, textures and stain drift are procedural fields of absolute position, so rendering any
region at any mpp is deterministic per seed, seamless between tiles, and the same tissue at another scale.
"""

from __future__ import annotations

import numpy as np

from segcls.core.constants import UNLABELLED
from segcls.synth.noise import cells, fbm, hash01, key, value_noise

CLASSES = ("stroma", "benign", "tumor", "necrosis")
COLORS = ((235, 120, 185), (60, 170, 90), (205, 40, 45), (235, 200, 60))
BACKGROUND = UNLABELLED  # no tissue: glass is unlabelled

REGION_SCALE = 500.0  # microns: lattice of the class fields, about the size of one tissue region
MOD_SCALE = 700.0  # microns: lattice of the fields that vary a class's look between regions
TISSUE_SCALE = 4000.0  # microns: lattice of the tissue / glass field
TISSUE_THRESHOLD = -0.18  # fbm level below which there is glass: about a quarter of a slide

_H = np.array([0.65, 0.70, 0.29], dtype=np.float32)
_E = np.array([0.07, 0.99, 0.11], dtype=np.float32)
_H /= np.linalg.norm(_H)
_E /= np.linalg.norm(_E)
# Stain protocols a dataset can be rendered with: (H vector, E vector, H strength, E strength). The tissue
# (labels, textures, densities) does not depend on the stain, so one seed rendered with two stains gives
# the same slides as two labs would stain them: a stain-shifted copy for testing robustness.
STAINS = {
    # Ruifrok & Johnston's vectors (their H&E OD matrix), strengths as drawn per slide below
    "standard": (_H, _E, 1.0, 1.0),
    # Macenko et al.'s reference H and E vectors (the HERef of common Macenko normalisers): a bluer
    # haematoxylin and an eosin that also absorbs blue, i.e. another lab's dyes and scanner
    "macenko": (
        np.array([0.5626, 0.7201, 0.4062], np.float32),
        np.array([0.2159, 0.8012, 0.5581], np.float32),
        1.0,
        1.0,
    ),
    # the standard dyes, haematoxylin over-stained and eosin under-stained (a longer H bath, a shorter E one)
    "strong-h": (_H, _E, 1.5, 0.65),
}
_GLASS = np.array([243.0, 241.0, 245.0], dtype=np.float32)


def _grid(x: int, y: int, width: int, height: int, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in microns: a (1, w) row and an (h, 1) column."""
    xs = (np.arange(x, x + width, dtype=np.float64) + 0.5)[None, :] * mpp
    ys = (np.arange(y, y + height, dtype=np.float64) + 0.5)[:, None] * mpp
    return xs, ys


def _fade(scale: float, mpp: float) -> float:
    """Contrast kept by a feature of `scale` microns at `mpp`: detail below a pixel blurs to its mean."""
    return min(1.0, max(0.0, scale / mpp - 0.5))


def _detail(xs, ys, mpp, k, scale) -> np.ndarray:
    """Value noise of `scale` microns centred on 0, faded as in `_fade`; not computed when invisible
    (at a coarse level its lattice could outnumber the pixels by far)."""
    fade = _fade(scale, mpp)
    if not fade:
        return np.float32(0)
    return fade * 2 * (value_noise(xs / scale, ys / scale, k) - 0.5)


def _blobs(xs, ys, mpp, k, *, cell, radius, density, elongation=1.0, spread=0.5) -> np.ndarray:
    """Coverage in [0, 1] of nucleus-like ellipses, at most one per cell and inside it (no neighbours to
    look up); edges are anti-aliased over about a pixel. `density` may be a per-pixel map."""
    if cell < 2 * mpp:  # many nuclei per pixel: their mean coverage, without a lattice per nucleus
        mean = density * np.pi * np.square(radius) * elongation / cell**2
        return np.broadcast_to(np.float32(mean), np.broadcast_shapes(xs.shape, ys.shape))
    dx, dy, a = cells(xs, ys, cell, k, 5)
    r = radius * (1 - spread / 2 + spread * a[..., 0])
    ra = np.minimum(r * elongation, cell / 2)
    margin = np.maximum(ra, r)
    cx = margin + a[..., 1] * (cell - 2 * margin)
    cy = margin + a[..., 2] * (cell - 2 * margin)
    theta = a[..., 3] * np.float32(np.pi)
    c, s = np.cos(theta), np.sin(theta)
    u, v = dx - cx, dy - cy
    q = np.sqrt(((u * c + v * s) / ra) ** 2 + ((v * c - u * s) / r) ** 2)
    edge = max(mpp, 0.5)
    cover = np.clip((1 - q) * r / edge + 0.5, 0, 1)
    cover *= a[..., 4] < density
    return cover.astype(np.float32)


def _streaks(xs, ys, mpp, k, angle, along, across) -> np.ndarray:
    """Noise stretched along `angle`: collagen-like fibres, in [-1, 1]."""
    fade = _fade(across, mpp)
    if not fade:
        return np.float32(0)
    c, s = np.cos(angle), np.sin(angle)
    u = (xs * c + ys * s) / along
    v = (ys * c - xs * s) / across
    return fade * 2 * (value_noise(u, v, k) - 0.5)


def _stroma(xs, ys, mpp, seed, m):
    base = hash01(np.int64(0), np.int64(0), key(seed, "fibre-angle")) * np.pi
    weights, layers = [], []
    for j in range(3):
        w = value_noise(xs / 300, ys / 300, key(seed, f"fibre-weight{j}")) ** 4
        angle = base + j * np.pi / 3
        f = _streaks(xs, ys, mpp, key(seed, f"fibre{j}"), angle, 45.0, 3.0)
        f += 0.5 * _streaks(xs, ys, mpp, key(seed, f"fibre-fine{j}"), angle, 15.0, 1.5)
        weights.append(w)
        layers.append(w * f)
    fibres = sum(layers) / (sum(weights) + 1e-6)
    density = 0.35 + 0.3 * m[2]  # collagen-rich and paucicellular .. cellular
    nuclei = _blobs(xs, ys, mpp, key(seed, "spindle"), cell=18.0, radius=1.5, density=density, elongation=3.5)
    e = 0.5 + 0.15 * m[0] + (0.3 + 0.2 * m[1]) * fibres
    h = 0.06 + 0.02 * fibres + 0.95 * nuclei
    return h, e


def _benign(xs, ys, mpp, seed, m):
    g = 110.0
    dx, dy, a = cells(xs, ys, g, key(seed, "gland"), 6)
    outer = g * (0.22 + 0.12 * a[..., 0]) * (1 + 0.2 * m[0])
    lumen = outer * (0.3 + 0.3 * a[..., 1] + 0.1 * m[2])
    stretch = 1 + 0.6 * a[..., 4]
    reach = np.minimum(outer * stretch, g / 2)
    cx = g / 2 + (a[..., 2] - 0.5) * (g - 2 * reach)
    cy = g / 2 + (a[..., 3] - 0.5) * (g - 2 * reach)
    theta = a[..., 5] * np.float32(np.pi)
    c, s = np.cos(theta), np.sin(theta)
    u, v = dx - cx, dy - cy
    wobble = 1 + 0.175 * _detail(xs, ys, mpp, key(seed, "gland-wobble"), 18.0)
    d = np.sqrt(((u * c + v * s) / stretch) ** 2 + (v * c - u * s) ** 2) * wobble
    aa = max(mpp, 0.5)
    in_gland = np.clip((outer - d) / aa + 0.5, 0, 1)
    in_lumen = np.clip((lumen - d) / aa + 0.5, 0, 1)
    epithelium = in_gland - in_lumen
    nuclei = _blobs(xs, ys, mpp, key(seed, "benign-nuclei"), cell=7.0, radius=2.3, density=0.7 + 0.25 * m[1])
    loose = fbm(xs, ys, 12.0, key(seed, "benign-stroma"), octaves=2, mpp=mpp)
    stroma_n = _blobs(xs, ys, mpp, key(seed, "benign-spindle"), cell=16.0, radius=1.8, density=0.35)
    h_out, e_out = 0.12 + 0.8 * stroma_n, 0.42 + 0.1 * m[2] + 0.15 * loose
    h_epi, e_epi = 0.32 + 0.1 * m[2] + 0.85 * nuclei, 0.3
    h_lum, e_lum = 0.02, 0.05 + 0.05 * loose
    h = h_out * (1 - in_gland) + h_epi * epithelium + h_lum * in_lumen
    e = e_out * (1 - in_gland) + e_epi * epithelium + e_lum * in_lumen
    return h, e


def _tumor(xs, ys, mpp, seed, m):
    radius = 3.3 * (1 + 0.25 * m[1])  # nuclear size and crowding vary from region to region
    nuclei = np.maximum(
        _blobs(xs, ys, mpp, key(seed, "tumor-n1"), cell=10.0, radius=radius, density=0.6 + 0.3 * m[0]),
        _blobs(xs + 5, ys + 5, mpp, key(seed, "tumor-n2"), cell=10.0, radius=3.0, density=0.3 + 0.3 * m[0]),
    )
    chromatin = 0.5 * _detail(xs, ys, mpp, key(seed, "chromatin"), 1.5)
    septa = np.abs(fbm(xs, ys, 90.0, key(seed, "septa"), octaves=2, mpp=mpp))
    septa = np.clip((0.05 - septa) / 0.03, 0, 1)
    # Cribriform regions (many small lumens) look glandular, like benign tissue.
    lumens = 0.5 * _detail(xs, ys, mpp, key(seed, "cribriform"), 22.0) - 0.36 + 0.1 * m[2]
    lumens = np.clip(lumens / 0.03, 0, 1)
    dark = 0.9 + 0.25 * m[1]
    h = (0.3 + dark * nuclei + 0.4 * nuclei * chromatin) * (1 - septa) + 0.08 * septa
    e = 0.3 * (1 - septa) + 0.55 * septa
    return h * (1 - lumens) + 0.02 * lumens, e * (1 - lumens) + 0.06 * lumens


def _necrosis(xs, ys, mpp, seed, m):
    smudge = fbm(xs, ys, 35.0, key(seed, "smudge"), octaves=3, mpp=mpp)
    grain = _detail(xs, ys, mpp, key(seed, "grain"), 2.0)
    debris = _blobs(xs, ys, mpp, key(seed, "debris"), cell=7.0, radius=1.3, density=0.4 + 0.3 * m[1])
    ghosts = _blobs(xs, ys, mpp, key(seed, "ghosts"), cell=12.0, radius=3.8, density=0.35 + 0.3 * m[2])
    e = 0.5 + 0.15 * m[0] + 0.14 * smudge + 0.1 * grain
    h = 0.1 + 0.05 * smudge + 1.1 * debris + 0.12 * ghosts
    return h, e


_TEXTURES = (_stroma, _benign, _tumor, _necrosis)


def _stains(seed: int, stain: str = "standard") -> tuple[np.ndarray, np.ndarray]:
    """This slide's H and E optical-density vectors under protocol `stain` (STAINS): strength and hue vary
    between slides around the protocol's."""
    if stain not in STAINS:
        raise ValueError(f"stain must be one of {', '.join(STAINS)}, got {stain!r}")
    base_h, base_e, strength_h, strength_e = STAINS[stain]
    r = hash01(np.arange(8), np.int64(0), key(seed, "stain"))
    h = base_h / np.linalg.norm(base_h) + 0.12 * (r[0:3] - 0.5)
    e = base_e / np.linalg.norm(base_e) + 0.12 * (r[3:6] - 0.5)
    h *= strength_h * (0.7 + 0.6 * r[6]) / np.linalg.norm(h)
    e *= strength_e * (0.7 + 0.6 * r[7]) / np.linalg.norm(e)
    return h.astype(np.float32), e.astype(np.float32)


def _labels(xs, ys, mpp, seed, background: bool) -> np.ndarray:
    best = fbm(xs, ys, REGION_SCALE, key(seed, "class0"), octaves=5, mpp=mpp)
    labels = np.zeros(best.shape, dtype=np.uint8)
    for k in range(1, len(CLASSES)):
        field = fbm(xs, ys, REGION_SCALE, key(seed, f"class{k}"), octaves=5, mpp=mpp)
        labels[field > best] = k
        np.maximum(best, field, out=best)
    if background:
        tissue = fbm(xs, ys, TISSUE_SCALE, key(seed, "tissue"), octaves=6, mpp=mpp)
        labels[tissue < TISSUE_THRESHOLD] = BACKGROUND
    return labels


def label_region(
    x: int, y: int, width: int, height: int, mpp: float, seed: int = 0, *, background: bool = True
) -> np.ndarray:
    """Ground truth of a region: (h, w) uint8 class index, 255 where there is no tissue.

    (x, y) is the top-left pixel in the frame of `mpp` (pixel i covers microns [i, i+1) * mpp).
    """
    return _labels(*_grid(x, y, width, height, mpp), mpp, seed, background)


def render_region(
    x: int,
    y: int,
    width: int,
    height: int,
    mpp: float,
    seed: int = 0,
    *,
    background: bool = True,
    tissue_class: int | None = None,
    stain: str = "standard",
) -> tuple[np.ndarray, np.ndarray]:
    """Render a region: ((h, w, 3) uint8 RGB, (h, w) uint8 labels as in `label_region`).

    `tissue_class` fills the region with that one class (image-level-labelled images); `background=False`
    leaves out the glass; `stain` is the staining protocol (STAINS), which changes colours only.
    """
    xs, ys = _grid(x, y, width, height, mpp)
    if tissue_class is None:
        labels = _labels(xs, ys, mpp, seed, background)
    else:
        labels = np.full((height, width), tissue_class, dtype=np.uint8)
    stain_h, stain_e = _stains(seed, stain)
    h = np.zeros((height, width), dtype=np.float32)
    e = np.zeros((height, width), dtype=np.float32)
    for k, texture in enumerate(_TEXTURES):
        where = labels == k
        if not where.any():
            continue
        rows, cols = np.flatnonzero(where.any(axis=1)), np.flatnonzero(where.any(axis=0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        sx, sy = xs[:, c0:c1], ys[r0:r1]
        # Three slow fields per class vary its look between regions (density, size, staining, ...),
        # so that a few annotated tiles cannot show a class's whole range.
        mods = [
            np.clip(2.5 * fbm(sx, sy, MOD_SCALE, key(seed, f"mod{k}.{j}"), octaves=2, mpp=mpp), -1, 1) for j in range(3)
        ]
        hk, ek = texture(sx, sy, mpp, seed, mods)
        sub = where[r0:r1, c0:c1]
        h[r0:r1, c0:c1][sub] = np.broadcast_to(hk, sub.shape)[sub]
        e[r0:r1, c0:c1][sub] = np.broadcast_to(ek, sub.shape)[sub]

    # Slide-wide stain strength and slow drift across the slide, as between scanners and sections.
    drift = 1 + 0.08 * fbm(xs, ys, 2500.0, key(seed, "drift"), octaves=2, mpp=mpp)
    od = (h * drift)[..., None] * stain_h + (e * drift)[..., None] * stain_e
    rgb = 255.0 * np.exp(-np.maximum(od, 0))
    glass = labels == BACKGROUND
    if glass.any():
        shade = 3 * fbm(xs, ys, 300.0, key(seed, "glass"), octaves=2, mpp=mpp)
        rgb[glass] = (_GLASS + np.broadcast_to(shade, glass.shape)[glass][:, None]).astype(np.float32)
    px = np.arange(x, x + width)[None, :]
    py = np.arange(y, y + height)[:, None]
    grain = hash01(px, py, key(seed, f"pixel{mpp:.6f}")) - 0.5
    rgb += 8 * grain[..., None]
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), labels
