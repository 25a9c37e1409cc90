import os
import signal
import sys

import click
import pytest
from click.testing import CliRunner

from segcls.core.atomic import atomic_path
from segcls.core.cli import handle_errors
from segcls.core.errors import DatasetError, SegclsError


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


def test_removed_on_failure_removes_what_the_block_made_and_nothing_else(tmp_path):
    from segcls.core.cli import removed_on_failure

    out = tmp_path / "out"
    (out / "old").mkdir(parents=True)
    (out / "old" / "kept.txt").write_text("before")
    with pytest.raises(KeyboardInterrupt), removed_on_failure(out, tmp_path / "new.txt"):
        (out / "old" / "made.txt").write_text("new")
        (out / "new" / "deep").mkdir(parents=True)
        (out / "new" / "deep" / "f").write_text("new")
        (tmp_path / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["out", "out/old", "out/old/kept.txt"]


def test_removed_on_failure_keeps_resumable_work_and_success(tmp_path):
    from segcls.core.cli import removed_on_failure

    runs = tmp_path / "sweep" / "runs"
    with pytest.raises(SegclsError), removed_on_failure(tmp_path / "sweep", keep=lambda p: (p / "last.pt").is_file()):
        (runs / "a").mkdir(parents=True)
        (runs / "a" / "last.pt").write_text("epoch 3")
        (runs / "b").mkdir()
        raise SegclsError("run b failed")
    assert sorted(p.name for p in runs.iterdir()) == ["a"] and (runs / "a" / "last.pt").is_file()
    with pytest.raises(SystemExit), removed_on_failure(tmp_path / "done.txt"):
        (tmp_path / "done.txt").write_text("finished")
        sys.exit(0)  # success: kept
    assert (tmp_path / "done.txt").is_file()


def test_check_overwrite_and_atomic_folder(tmp_path):
    from segcls.core.atomic import atomic_folder, check_overwrite

    (tmp_path / "empty").mkdir()
    check_overwrite(tmp_path / "empty", tmp_path / "absent", overwrite=False)  # nothing finished there
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "old.txt").write_text("old")
    with pytest.raises(SegclsError, match=r"ds exists: --overwrite replaces it"):
        check_overwrite(tmp_path / "ds", overwrite=False)
    with pytest.raises(SegclsError, match="--overwrite"), atomic_folder(tmp_path / "ds"):
        pass
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "ds", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("half-way")
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["old.txt"]  # a failure replaces nothing
    with atomic_folder(tmp_path / "ds", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "empty"]  # no temporary folder left
