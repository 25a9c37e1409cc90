"""The command grammar every `segcls-*` command follows, defined once (docs/commands.md has the table).

- `command(name)` / `group(name)`: `-h/--help`, `--version`, defaults shown in the help, and
  `handle_errors` (a SegclsError is one `Error:` line and exit 2, Ctrl-C exit 130, SIGTERM exit 143).
- `output_option`, `overwrite_option`, `quiet_option`: `-o/--output PATH`, `--overwrite`, `-q/--quiet`.
- `input_path()`: the click type of inputs (datasets, slides, models, checkpoints): they must exist and be
  readable, checked while the arguments are parsed, before any slow work; `check_input` for paths found later.
- The overwrite rule, `check_overwrite` (segcls.core.atomic): a finished output is never replaced without
  `--overwrite`; the refusal is one `Error:` line naming the flag.
- The failure rule, `removed_on_failure`: a command that fails (user error, exception, Ctrl-C) leaves
  nothing it created, except what `keep` names (work a rerun continues, e.g. a run's last.pt).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from segcls.core.atomic import check_overwrite
from segcls.core.errors import SegclsError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}

__all__ = [
    "CONTEXT_SETTINGS",
    "UserError",
    "check_input",
    "check_overwrite",
    "command",
    "group",
    "handle_errors",
    "input_path",
    "output_option",
    "overwrite_option",
    "quiet_option",
    "removed_on_failure",
    "require_extra",
    "version_option",
]


class UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: atomic writes remove their temporary files


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SegclsError into `Error: message` + its exit code, Ctrl-C into exit 130, and SIGTERM (a batch
    scheduler's kill) into exit 143 after the same clean-up."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminated) if main else None
        try:
            return fn(*args, **kwargs)
        except SegclsError as e:
            raise UserError(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def require_extra(extra: str, *modules: str) -> None:
    """Raise one-line SegclsError naming the pip extra if a module a command needs is not installed (a
    runtime-only `pip install segcls` has no torch), instead of a ModuleNotFoundError traceback."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or e.name.split(".")[0] != module:
                raise  # something the module itself imports is missing: a broken install, show it
            raise SegclsError(f"{module} is not installed: pip install 'segcls[{extra}]'") from None


# -- options -------------------------------------------------------------------------------------------


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from segcls import __version__

    click.echo(f"{ctx.find_root().info_name} {__version__}")
    ctx.exit()


def version_option() -> click.Option:
    """`--version`: prints e.g. `segcls-train 0.1.0` (the command's name and segcls.__version__)."""
    return click.Option(
        ["--version"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_print_version,
        help="Print the command's name and segcls version, and exit.",
    )


quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bars (the result lines stay).")


def output_option(help: str, *, required: bool = False, default: Any = None, **path: bool) -> Callable:
    """`-o/--output PATH` (a pathlib.Path): what the command writes. `path`: click.Path's file_okay/dir_okay."""
    return click.option(
        "-o", "--output", required=required, default=default, type=click.Path(path_type=Path, **path), help=help
    )


def overwrite_option(what: str = "a finished output", *, help: str | None = None) -> Callable:
    """`--overwrite`: without it, a finished output is never replaced (check_overwrite)."""
    return click.option("--overwrite", is_flag=True, help=help or f"Replace {what} that exists [default: refuse].")


class _InputPath(click.Path):
    """click.Path whose refusal is one `Error:` line naming the option (not a usage message)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as e:
            name = (param.opts[0] if isinstance(param, click.Option) else param.human_readable_name) if param else ""
            raise UserError(f"{name}: {e.message}" if name else e.message) from None


def input_path(*, file_okay: bool = True, dir_okay: bool = True) -> click.Path:
    """The click type of an input: it must exist and be readable (checked while parsing, before any work)."""
    return _InputPath(exists=True, readable=True, file_okay=file_okay, dir_okay=dir_okay, path_type=Path)


def check_input(path: str | Path, what: str) -> Path:
    """`path` if it exists and can be read, else a one-line SegclsError naming `what` it should be."""
    path = Path(path)
    if not path.exists():
        raise SegclsError(f"{what} not found: {path}")
    if not os.access(path, os.R_OK):
        raise SegclsError(f"{what} is not readable: {path}")
    return path


def command(name: str) -> Callable[[Callable], click.Command]:
    """A segcls command or subcommand: `-h/--help`, `--version`, defaults shown, `handle_errors`."""

    def decorator(fn: Callable) -> click.Command:
        cmd = click.command(name, context_settings=CONTEXT_SETTINGS)(handle_errors(fn))
        cmd.params.append(version_option())  # listed last, beside -h/--help
        return cmd

    return decorator


def group(name: str) -> Callable[[Callable], click.Group]:
    """A segcls command with subcommands (add them with `add_command`): `-h/--help`, `--version`."""

    def decorator(fn: Callable) -> click.Group:
        cmd = click.group(name, context_settings=CONTEXT_SETTINGS)(fn)
        cmd.params.append(version_option())
        return cmd

    return decorator


# -- the failure rule ----------------------------------------------------------------------------------


@contextlib.contextmanager
def removed_on_failure(*outputs: str | Path | None, keep: Callable[[Path], bool] | None = None) -> Iterator[None]:
    """If the block fails (an exception, Ctrl-C, SIGTERM, a non-zero exit), remove what it created at or
    under `outputs`: the paths that were not there when it began, except those `keep` accepts (with
    everything under them: work a rerun continues) and the folders that hold them. What was there before is
    left alone."""
    paths = list(dict.fromkeys(Path(p) for p in outputs if p is not None))
    keep = keep or (lambda _path: False)
    before = {path: _tree(path) for path in paths}
    try:
        yield
    except BaseException as e:
        if not _succeeded(e):
            for path in reversed(paths):
                _remove_new(path, before[path], keep)
        raise


def _succeeded(e: BaseException) -> bool:
    if isinstance(e, SystemExit):
        return e.code in (None, 0)
    return isinstance(e, click.exceptions.Exit) and e.exit_code == 0


def _tree(path: Path) -> set[Path]:
    """`path` and, for a folder, everything under it."""
    if not (path.exists() or path.is_symlink()):
        return set()
    found = {path}
    if path.is_dir() and not path.is_symlink():
        for root, folders, files in os.walk(path):
            found.update(Path(root, name) for name in (*folders, *files))
    return found


def _remove_new(path: Path, existed: set[Path], keep: Callable[[Path], bool]) -> None:
    if not (path.exists() or path.is_symlink()) or keep(path):
        return
    if path.is_dir() and not path.is_symlink():
        for child in list(path.iterdir()):
            _remove_new(child, existed, keep)
        if path not in existed and not any(path.iterdir()):
            path.rmdir()
    elif path not in existed:
        path.unlink()
