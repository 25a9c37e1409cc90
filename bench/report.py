"""Where a benchmark's results go: `-o/--output` JSON with its markdown table beside it (same stem, .md), in
the working directory unless -o says otherwise, never into the package; a finished results file is replaced
only with `--overwrite` (the segcls command grammar, segcls.core.cli)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from segcls.core.atomic import atomic_path, check_overwrite, check_writable
from segcls.core.cli import output_option, overwrite_option, quiet_option


def results_options(name: str) -> Callable:
    """-o/--output (default ./bench-NAME.json), --overwrite and -q/--quiet of `segcls-bench NAME`."""

    def decorator(fn: Callable) -> Callable:
        fn = quiet_option(fn)
        fn = overwrite_option("a results file (the JSON or its .md)")(fn)
        return output_option(
            "Results JSON; the markdown table goes beside it (.md).", default=Path(f"bench-{name}.json"), dir_okay=False
        )(fn)

    return decorator


def markdown_path(json_path: Path) -> Path:
    return Path(json_path).with_suffix(".md")


def check_results(json_path: Path, overwrite: bool) -> None:
    """Before measuring anything: refuse finished results (without --overwrite) and an unwritable folder."""
    check_overwrite(json_path, markdown_path(json_path), overwrite=overwrite)
    check_writable(json_path)
    check_writable(markdown_path(json_path))


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def write_results(json_path: Path, data: dict, text: str, command: bool = True) -> None:
    """`json_path` and the markdown `text` beside it (same stem, .md, ending with the command line unless
    `command` is False), each written atomically."""
    json_path = Path(json_path)
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    ending = f"\n\nCommand: `{data.get('command', command_line())}`" if command else ""
    with atomic_path(markdown_path(json_path)) as tmp:
        tmp.write_text(f"{text.rstrip()}{ending}\n")
