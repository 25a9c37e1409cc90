"""The layout an installed wheel has, staged with symlinks, for tools that read the source tree by folders.

setuptools installs `export/` as `segcls.export`, `runtime/` as `segcls.runtime` and `bench/` as `segcls.bench`
(pyproject's `package-dir`); an editable install resolves those through an import hook that static tools do not
see. `stage(into)` lays out `into/segcls/...` as pip installs the project, each folder a symlink to the source.
Used by the import-layer lint (scripts/lint_imports.py) and the documentation's API reference
(scripts/mkdocs_hooks.py).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage(into: Path) -> None:
    """`into/segcls/...` laid out as pip installs the project, each folder a symlink to the source."""
    package_dir: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    top = into / "segcls"
    top.mkdir(parents=True)
    for entry in (ROOT / package_dir["segcls"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for name, folder in package_dir.items():
        parts = name.split(".")
        if len(parts) == 2 and not (top / parts[1]).exists():  # segcls.export -> export/, ...
            (top / parts[1]).symlink_to(ROOT / folder)
