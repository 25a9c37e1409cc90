import os
import signal

import click
from click.testing import CliRunner

from segcls.core.atomic import atomic_path
from segcls.core.cli import handle_errors
from segcls.core.errors import DatasetError


def _command(tmp_path, action):
    @click.command()
    @handle_errors
    def main() -> None:
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"half")
            action()

    return main


def test_segcls_error_is_one_line_exit_2(tmp_path):
    def fail():
        raise DatasetError("masks/a.png: value 7 >= 3 classes")

    result = CliRunner().invoke(_command(tmp_path, fail))
    assert result.exit_code == 2
    assert result.output == "Error: masks/a.png: value 7 >= 3 classes\n"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_exits_130_and_leaves_no_file(tmp_path):
    def interrupt():
        raise KeyboardInterrupt

    result = CliRunner().invoke(_command(tmp_path, interrupt))
    assert result.exit_code == 130 and "Interrupted." in result.output
    assert list(tmp_path.iterdir()) == []


def test_sigterm_exits_143_leaves_no_file_and_restores_the_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(_command(tmp_path, lambda: os.kill(os.getpid(), signal.SIGTERM)))
    assert result.exit_code == 143
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before
