"""What every segcls command shares: user errors become one `Error:` line and a non-zero exit."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from segcls.errors import SegclsError


class UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SegclsError into `Error: message` + its exit code, and Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SegclsError as e:
            raise UserError(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper
