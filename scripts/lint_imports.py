"""Check the import-linter layer contracts of pyproject.toml on the installed package layout.

An editable install resolves `segcls.export`, `segcls.runtime` and `segcls.bench` (folders export/, runtime/,
bench/) through an import hook that import-linter's graph builder (grimp) does not see. So the script stages the
layout an installed wheel has (scripts/package_layout.py) in a temporary folder and runs `lint-imports` over it:
the contracts then see every arrow, lazy imports included.

    python scripts/lint_imports.py [lint-imports options, e.g. --verbose]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from package_layout import ROOT, stage


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="segcls-imports-") as tmp:
        stage(Path(tmp))
        env = os.environ | {"PYTHONPATH": tmp}
        lint = Path(sys.executable).with_name("lint-imports")
        command = [str(lint), str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo", *argv]
        return subprocess.call(command, env=env, cwd=tmp)  # lint-imports puts its working folder first on sys.path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
