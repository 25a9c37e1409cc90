"""Write outputs under a temporary name and rename when complete, so a crash or Ctrl-C never leaves
a half-written file (or folder) where a finished one is expected; and never replace a finished output
unless asked to (`check_overwrite`, the rule of every segcls command)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from segcls.core.errors import SegclsError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SegclsError(f"output folder does not exist: {parent}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=parent)
    except OSError as e:
        raise SegclsError(f"cannot write to {parent}: {e.strerror}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; a finished output gets the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; if the block succeeds it takes the place of `path`
    (an empty folder, or with `overwrite` a finished output, is replaced)."""
    path = Path(path)
    check_overwrite(path, overwrite=overwrite)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SegclsError(f"output folder does not exist: {parent}")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=parent))
    except OSError as e:
        raise SegclsError(f"cannot write to {parent}: {e.strerror}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a finished folder gets the usual mode
        if path.is_dir() and not path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.replace(path, old / path.name)  # two renames: `path` is never half old, half new
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            if path.exists() or path.is_symlink():
                path.unlink()
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finished(path: str | Path) -> bool:
    """Whether `path` is an output a command would replace: a file, or a folder with something in it."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return path.exists() or path.is_symlink()


def check_overwrite(*paths: str | Path | None, overwrite: bool) -> None:
    """The overwrite rule of every segcls command: a finished output is never replaced unless `overwrite`.
    Called before any slow work, so that a refusal costs nothing."""
    if overwrite:
        return
    for path in paths:
        if path is not None and finished(path):
            raise SegclsError(f"{path} exists: --overwrite replaces it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | Path) -> None:
    """Fail before slow work, not after it: the folder must exist and accept a file."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SegclsError(f"output folder does not exist: {parent} (for {path.name})")
    if path.is_dir():
        raise SegclsError(f"output {path} is a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise SegclsError(f"cannot write to {parent}: {e.strerror}") from None
