"""What a run of `infer_slide` is asked to do: the options of `segcls-infer`, checked before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segcls.core.errors import SegclsError
from segcls.runtime.stitch import STITCH_MODES
from segcls.runtime.tiling import DEFAULT_OVERLAP, TileGrid

# Optional outputs, by kind: the InferOptions fields that hold their paths.
EXTRA_KINDS = ("probs", "overlay", "geojson", "summary")


@dataclass
class InferOptions:
    """What `segcls-infer` options set; paths of optional outputs are None when not wanted."""

    backend: str = "auto"
    batch: int = 4
    tile: int = 1024  # read-frame px, context included
    overlap: int = DEFAULT_OVERLAP  # read-frame px of context on each side, multiple of 16 (docs/overlap.md)
    stitch: str = "crop"  # crop | blend
    mpp: float | None = None  # target resolution; default the model's training mpp
    slide_mpp: float | None = None  # overrides the slide's own mpp
    level: int | None = None  # read this level as is (no resampling)
    out_mpp: float | None = None  # mask resolution; default the slide's level 0
    tissue: str | Path = "auto"  # auto | none | mask image path
    trim: bool = True  # a backend without a fixed tile, crop stitching: tiles cut down to their cores' tissue
    overlay: Path | None = None
    geojson: Path | None = None
    geojson_per_region: bool = False  # one feature per region instead of one MultiPolygon per class
    geojson_min_area: float = 0.0  # um^2: smaller regions are left out of the GeoJSON
    probs: Path | None = None
    summary: Path | None = None
    truth: Path | None = None  # a ground-truth label mask (segcls TIFF, 255 = ignore): F1 goes in the summary
    skip_damaged: bool = False  # damaged stored tiles read as glass and their regions 255, instead of an error
    workers: int | str = "auto"  # reader threads, or "auto": from the core count and the device (reader_budget)
    sessions: int | str = "auto"  # ONNX Runtime sessions side by side on the CPU, or "auto" (cpu_sessions)
    prefetch: int = 1  # batch buffers beyond the three a streaming backend and one filling batch need
    progress: bool = True

    def __post_init__(self) -> None:
        if self.stitch not in STITCH_MODES:
            raise SegclsError(f"--stitch must be one of {', '.join(STITCH_MODES)}, got {self.stitch!r}")
        for name in ("workers", "sessions"):
            value = getattr(self, name)
            if value != "auto":
                try:
                    setattr(self, name, int(value))
                except (TypeError, ValueError):
                    raise SegclsError(f"--{name} must be 'auto' or a number >= 1, got {value!r}") from None
        for name in ("batch", "workers", "sessions"):
            value = getattr(self, name)
            if value != "auto" and value < 1:
                raise SegclsError(f"--{name} must be >= 1, got {value}")
        if self.prefetch < 0:
            raise SegclsError(f"prefetch must be >= 0, got {self.prefetch}")
        TileGrid((1, 1), self.tile, self.overlap)  # refuses a bad --tile or --overlap before any work
        if self.geojson_min_area < 0:
            raise SegclsError(f"--geojson-min-area must be >= 0, got {self.geojson_min_area}")
        for name in ("mpp", "slide_mpp", "out_mpp"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise SegclsError(f"--{name.replace('_', '-')} must be > 0, got {value}")

    def outputs(self, mask: Path) -> dict[str, Path]:
        """Every file this run writes, by kind; the mask last."""
        extra = {k: getattr(self, k) for k in EXTRA_KINDS}
        return {k: Path(v) for k, v in extra.items() if v is not None} | {"mask": Path(mask)}
