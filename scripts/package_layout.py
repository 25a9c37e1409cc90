"""The layout an installed wheel has, staged with symlinks, for tools that read the source tree by folders.

setuptools installs `export/` as `segcls.export`, `runtime/` as `segcls.runtime` and `bench/` as `segcls.bench`
(pyproject's `package-dir`); an editable install resolves those through an import hook that static tools do not
see. `stage(into)` lays out `into/segcls/...` as pip installs the project, each folder a symlink to the source
(the import-layer lint, scripts/lint_imports.py), or with `copy=True` a copy of it (the documentation's API
reference, scripts/mkdocs_hooks.py: griffe resolves symlinks and would walk the source folders again).
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage(into: Path, copy: bool = False) -> None:
    """`into/segcls/...` laid out as pip installs the project, each entry a symlink to the source (or a copy)."""
    package_dir: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    top = into / "segcls"
    top.mkdir(parents=True)
    for entry in (ROOT / package_dir["segcls"]).iterdir():
        if entry.name != "__pycache__":
            _place(entry, top / entry.name, copy)
    for name, folder in package_dir.items():
        parts = name.split(".")
        if len(parts) == 2 and not (top / parts[1]).exists():  # segcls.export -> export/, ...
            _place(ROOT / folder, top / parts[1], copy)


def _place(source: Path, target: Path, copy: bool) -> None:
    if not copy:
        target.symlink_to(source)
    elif source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "results"))
    else:
        shutil.copy2(source, target)
