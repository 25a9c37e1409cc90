"""MkDocs hooks (mkdocs.yml `hooks`): the installed package layout for the API reference.

mkdocstrings reads the source statically (griffe), by folders: it finds `segcls/` but not `runtime/` and
`export/`, which pip installs as `segcls.runtime` and `segcls.export`. So the layout a wheel has is copied
(scripts/package_layout.py, a few MB) into build/docs-src/, the handler's `paths` in mkdocs.yml. It is
staged at startup, before any plugin reads its configuration: staged in `on_config` (which runs after the
plugins'), a fresh clone's first build had no build/docs-src when mkdocstrings set up its paths, and failed.
"""

from __future__ import annotations

import shutil

from package_layout import ROOT, stage

STAGED = ROOT / "build" / "docs-src"


def on_startup(command: str, dirty: bool) -> None:
    shutil.rmtree(STAGED, ignore_errors=True)
    stage(STAGED, copy=True)
