"""What every segcls command shares: user errors become one `Error:` line and a non-zero exit."""

from __future__ import annotations

import functools
import importlib
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from segcls.core.errors import SegclsError


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
