"""Check the import-linter layer contracts of pyproject.toml on the installed package layout.

setuptools installs `export/` as `segcls.export`, `runtime/` as `segcls.runtime` and `bench/` as `segcls.bench`
(`package-dir`); an editable install resolves those through an import hook that import-linter's graph builder
(grimp) does not see. So the script stages the layout an installed wheel has, with symlinks, in a temporary
folder, and runs `lint-imports` over it: the contracts then see every arrow, lazy imports included.

    python scripts/lint_imports.py [lint-imports options, e.g. --verbose]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def stage(into: Path) -> None:
    """`into/segcls/...` laid out as pip installs the project, each folder a symlink to the source."""
    package_dir: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    top = into / "segcls"
    top.mkdir()
    for entry in (ROOT / package_dir["segcls"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for name, folder in package_dir.items():
        parts = name.split(".")
        if len(parts) == 2 and not (top / parts[1]).exists():  # segcls.export -> export/, ...
            (top / parts[1]).symlink_to(ROOT / folder)


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="segcls-imports-") as tmp:
        stage(Path(tmp))
        env = os.environ | {"PYTHONPATH": tmp}
        lint = Path(sys.executable).with_name("lint-imports")
        command = [str(lint), str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo", *argv]
        return subprocess.call(command, env=env, cwd=tmp)  # lint-imports puts its working folder first on sys.path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
