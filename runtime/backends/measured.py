"""What a backend measured on this machine, kept: `~/.cache/segcls/<kind>/<key>.json`.

A check of a backend against ONNX Runtime, and the `--backend auto` probe, give the same answer for the
same model bytes, CPU (model and flags: the kernels are picked from them) and library versions, so each is
measured once and read back afterwards. The key holds all of those and whatever else the caller names
(threads, tile, ...); an entry that cannot be read is measured again.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from segcls.core.atomic import atomic_path
from segcls.core.cpu import cpu_info
from segcls.core.hashing import file_sha256

VERSION = 1
LIBRARIES = ("segcls", "onnxruntime", "openvino")


def cache_folder(kind: str) -> Path:
    from segcls.core.engine import cache_root  # torch-free; the engine cache lives there too

    return cache_root() / kind


def measurement_key(model: Path, **fields) -> str:
    """`<model sha256 prefix>-<digest of everything the measurement depends on>`."""
    cpu = cpu_info()
    sha = file_sha256(model)
    everything = {
        "model_sha256": sha,
        "cpu": cpu.model,
        "flags": sorted(cpu.flags),
        "versions": {name: library_version(name) for name in LIBRARIES},
        **fields,
    }
    digest = hashlib.sha256(json.dumps(everything, sort_keys=True, default=str).encode()).hexdigest()
    return f"{sha[:16]}-{digest[:16]}"


def read_entry(path: Path) -> dict | None:
    """A kept measurement, or None where there is none or it is unreadable."""
    try:
        data = json.loads(path.read_text())
        return data["entry"] if data.get("version") == VERSION else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_entry(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"version": VERSION, "entry": entry}, indent=2) + "\n")


def library_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
