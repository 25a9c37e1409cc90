"""What a finished slide reports: the summary (JSON with `--summary`) and the one line printed for it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segcls.runtime.backends import Backend
from segcls.runtime.options import InferOptions
from segcls.runtime.plan import TilePlan


@dataclass
class Timings:
    """Seconds spent per stage of one slide."""

    tissue: float = 0.0  # planning: thumbnail, tissue detection, tiles
    read: float = 0.0  # reading and decoding, summed over the reader threads
    wait: float = 0.0  # the backend's stream waiting for the readers
    infer: float = 0.0  # inside the backend's stream, less the waits
    stitch: float = 0.0  # outputs into the label map
    write: float = 0.0  # writing left after inference: what the outputs add to the run
    write_cpu: float = 0.0  # all the mask's tile work, on any thread, overlapped or not


@dataclass
class SlideRun:
    """Everything one slide's summary is made from."""

    slide: object  # the open Slide
    backend: Backend
    plan: TilePlan
    options: InferOptions
    outputs: dict[str, Path]
    labels: np.ndarray = field(repr=False)  # the stride-8 label map (uint8, 255 = not tissue)
    scores: np.ndarray | None  # slide-level class scores: the max over tiles of each tile's
    timings: Timings
    seconds: float  # the whole run
    readers: int
    damaged: list = field(default_factory=list)  # DamagedTileError of each damaged stored tile read as glass


def summarize(run: SlideRun) -> dict:
    """The summary of one slide: sizes, tiles, areas per class, slide class, timings, backend, outputs."""
    slide, plan, description = run.slide, run.plan, run.backend.description
    counts = np.bincount(run.labels.ravel(), minlength=256)
    px_mm2 = (plan.label_px * slide.mpp / 1000.0) ** 2 if slide.mpp else None  # one label-map px, in mm^2
    area = {c: (round(float(counts[i]) * px_mm2, 6) if px_mm2 else None) for i, c in enumerate(description.classes)}
    slide_class = None
    if run.scores is not None:
        slide_class = {
            "class": description.classes[int(np.argmax(run.scores))],
            "scores": {c: float(s) for c, s in zip(description.classes, run.scores, strict=True)},
        }
    grid, tiles, seconds, infer = plan.grid, plan.tiles, run.seconds, run.timings.infer
    return {
        "slide": str(getattr(slide, "path", "")),
        "size": list(slide.dimensions),
        "slide_mpp": slide.mpp,
        "mpp": round(plan.read.mpp, 6) if plan.read.mpp else None,
        "level": plan.read.level,
        "read_size": list(plan.read.size),
        "tile": grid.tile,
        "overlap": grid.overlap,
        "stitch": run.options.stitch,
        "tiles": {
            "total": len(grid),
            "run": len(tiles),  # network inputs: a trimmed tile may be split into several
            "skipped": len(grid) - len({(t.row, t.col) for t in tiles}),
            "input_mpx": round(plan.input_mpx, 3),  # the network's work
        },
        "area_mm2": area,
        "tissue_mm2": round(float(counts[: len(description.classes)].sum()) * px_mm2, 6) if px_mm2 else None,
        "slide_class": slide_class,
        "timings_s": {k: round(v, 3) for k, v in asdict(run.timings).items()} | {"total": round(seconds, 3)},
        "tiles_per_s": round(len(tiles) / seconds, 2) if seconds else None,
        "infer_tiles_per_s": round(len(tiles) / infer, 2) if infer else None,
        "backend": run.backend.name,
        "precision": run.backend.precision,
        "backend_choice": run.backend.choice,  # how --backend auto chose it: what each candidate measured
        "readers": run.readers,
        "device": run.backend.device,
        "damaged_tiles": [
            {"level": e.level, "box": list(e.box), "level_box": list(e.level_box), "reason": e.reason}
            for e in run.damaged
        ],  # with --skip-damaged: read as glass, their regions 255 (x, y, width, height in level-0 px)
        "outputs": {k: str(v) for k, v in run.outputs.items()},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(run.options).items()},
    }


def result_line(summary: dict, mask: Path) -> str:
    """The one line printed per finished slide."""
    s = summary
    truth = f", macro F1 {s['truth']['macro_f1']:.4f} vs truth" if "truth" in s else ""
    damaged = len(s["damaged_tiles"])
    skipped = f", {damaged} damaged tile{'s' * (damaged != 1)} left unlabelled" if damaged else ""
    precision = f" {s['precision']}" if s.get("precision") else ""
    return (
        f"{Path(s['slide']).name}: {s['tiles']['run']} tiles in {s['timings_s']['total']:.1f} s "
        f"({s['tiles_per_s'] or 0:.1f} tiles/s, {s['backend']}{precision} on {s['device']}"
        f"{choice_text(s.get('backend_choice'))}{truth}{skipped}) -> {mask}"
    )


def choice_text(choice: dict | None) -> str:
    """ ", auto: fastest of openvino 10.70, onnxruntime 6.01 tiles/s" for a backend that --backend auto chose."""
    if not choice:
        return ""
    timed = [m for m in choice.get("measured", []) if m.get("tiles_per_s")]
    if not timed:
        return ", auto: the only backend for it here"
    rates = ", ".join(f"{m['backend']} {m['tiles_per_s']:.2f}" for m in sorted(timed, key=lambda m: -m["tiles_per_s"]))
    failed = [m["backend"] for m in choice.get("measured", []) if not m.get("passed")]
    return f", auto: fastest of {rates} tiles/s" + (f"; {', '.join(failed)} failed its check" if failed else "")
