"""Where a run's files go: the slides named on the command line, and each slide's mask and optional outputs."""

from __future__ import annotations

import dataclasses
import glob
from pathlib import Path

from segcls.core.constants import SLIDE_SUFFIXES
from segcls.core.errors import SegclsError
from segcls.runtime.options import EXTRA_KINDS, InferOptions

# Optional outputs: kind -> file suffix beside the mask.
EXTRA_OUTPUTS = {
    "overlay": ".overlay.png",
    "geojson": ".geojson",
    "probs": ".probs.npy",
    "summary": ".summary.json",
}
AUTO = "-"  # an optional output named after the mask, beside it (the value of a bare `--overlay`)


def expand_slides(args: tuple[str, ...] | list[str]) -> tuple[list[Path], bool]:
    """Files, folders (their slide files) and globs -> (slides, whether OUT is a folder)."""
    slides: list[Path] = []
    many = len(args) > 1
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file())
            if not found:
                raise SegclsError(f"no slide files in folder {path}")
            slides += found
            many = True
        elif not path.exists() and glob.has_magic(arg):
            found = sorted(Path(p) for p in glob.glob(arg))
            if not found:
                raise SegclsError(f"no files match {arg}")
            slides += found
            many = True
        else:
            slides.append(path)  # a missing file is reported when its turn comes
    names = [s.stem for s in slides]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if many and duplicates:
        raise SegclsError(f"several slides are named {duplicates[0]}: their outputs would collide in one folder")
    return slides, many


def stem(mask: Path) -> Path:
    """`out/NAME.mask.tif` -> `out/NAME`: where the optional outputs of a mask go."""
    name = mask.name
    for suffix in (".tiff", ".tif"):
        name = name.removesuffix(suffix)
    return mask.with_name(name.removesuffix(".mask"))


def plan_outputs(slide: Path, out: Path, many: bool, extras: dict[str, str | None]) -> dict[str, Path]:
    """The mask path and each requested optional output for one slide. An existing folder given for one
    slide is a folder too (`-o out/` -> out/NAME.mask.tif), never an output that is "done already"."""
    mask = out / f"{slide.stem}.mask.tif" if many or out.is_dir() else out
    paths = {}
    for kind, value in extras.items():
        if value is None:
            continue
        if value == AUTO:
            paths[kind] = Path(f"{stem(mask)}{EXTRA_OUTPUTS[kind]}")
        elif many or Path(value).is_dir():  # a folder for every slide's file of that kind
            paths[kind] = Path(value) / f"{slide.stem}{EXTRA_OUTPUTS[kind]}"
        else:
            paths[kind] = Path(value)
    return {**paths, "mask": mask}


def make_folders(out_dir: Path, extras: dict[str, str | None]) -> None:
    """OUT_DIR and each folder named for an optional output kind ("-" means beside the mask)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for value in extras.values():
        if value not in (None, AUTO):
            Path(value).mkdir(parents=True, exist_ok=True)


def extras_of(options: InferOptions) -> dict[str, str | None]:
    """The optional outputs `options` asks for: kind -> "-" (beside the mask), a path or a folder, or None."""
    return {k: (None if (v := getattr(options, k)) is None else str(v)) for k in EXTRA_KINDS}


def slide_options(options: InferOptions, outputs: dict[str, Path]) -> InferOptions:
    """`options` with the optional output paths of one slide (from `plan_outputs`)."""
    extra = {k: v for k, v in outputs.items() if k != "mask"}
    return dataclasses.replace(options, **{**dict.fromkeys(EXTRA_KINDS), **extra})
