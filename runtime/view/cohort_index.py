"""A cohort made by `segcls-infer SLIDES... -o OUT_DIR`, read back for viewing: OUT_DIR/cohort.csv (by column
name) and each slide's NAME.summary.json, GeoJSON and mask.

Paths in cohort.csv are as `segcls-infer` was given them, often relative to the folder it ran in; each is
looked for as written, then relative to OUT_DIR's parent, then (masks and their siblings) inside OUT_DIR.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from segcls.core.errors import SegclsError
from segcls.runtime.cohort import CSV_FIELDS, CSV_NAME
from segcls.runtime.view.sources import ViewItem, beside_mask, item_key, open_item, read_summary

REQUIRED = ("slide", "status", "mask")


@dataclass(frozen=True)
class CohortRow:
    """One line of cohort.csv, paths as written there."""

    slide: str
    status: str
    mask: str
    error: str
    run: dict  # seconds, tiles, tiles_per_s (None where empty)


def read_cohort(out_dir: str | Path) -> list[CohortRow]:
    """The rows of OUT_DIR/cohort.csv; SegclsError if it is missing or lacks a needed column."""
    path = Path(out_dir) / CSV_NAME
    if not path.is_file():
        raise SegclsError(f"no {CSV_NAME} in {out_dir}: expected a folder written by segcls-infer SLIDES... -o DIR")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
        if missing:
            raise SegclsError(f"{path}: expected columns {', '.join(CSV_FIELDS)}; missing {', '.join(missing)}")
        rows = []
        for record in reader:
            run = {k: _number(record.get(k)) for k in ("seconds", "tiles", "tiles_per_s")}
            rows.append(CohortRow(record["slide"], record["status"], record["mask"], record.get("error") or "", run))
    return rows


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _find(written: str, out_dir: Path, inside: bool) -> Path | None:
    path = Path(written)
    candidates = [path] if path.is_absolute() else [path, out_dir.parent / path]
    if inside:
        candidates.append(out_dir / path.name)
    return next((p for p in candidates if p.is_file()), None)


def open_cohort(out_dir: str | Path, progress: bool = True) -> list[ViewItem]:
    """A ViewItem per row of the cohort; a slide or mask that cannot be opened is listed with its error
    instead of stopping the viewer."""
    out_dir = Path(out_dir)
    rows = read_cohort(out_dir)
    items = []
    for row in tqdm(rows, desc="Opening slides", unit="slide", disable=not progress or len(rows) < 2):
        slide = _find(row.slide, out_dir, inside=False)
        mask = _find(row.mask, out_dir, inside=True) if row.mask else None
        mask = mask if row.status != "failed" else None
        summary_path = beside_mask(mask, ".summary.json") if mask else None
        summary_path = summary_path or _find(f"{Path(row.slide).stem}.summary.json", out_dir, inside=True)
        geojson = beside_mask(mask, ".geojson") if mask else None
        status, error = row.status, row.error
        try:
            if slide is None:
                raise SegclsError(f"slide not found: {row.slide}")
            summary = read_summary(summary_path) if summary_path else None
            item = open_item(slide, mask, geojson, summary)
        except SegclsError as e:
            path = Path(row.slide)
            item = ViewItem(item_key(slide or path), path.name, slide or path, error=str(e))
            status = "failed" if status == "failed" else "unreadable"
            error = error or str(e)
        item.status, item.error, item.run = status, error, row.run
        if status == "done" and mask is None and item.tiles is not None:
            item.error = f"mask not found: {row.mask}"
        items.append(item)
    return items
