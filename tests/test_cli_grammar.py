"""The command grammar of docs/commands.md, tested once over every command and subcommand.

The commands are discovered from pyproject's [project.scripts] and their click groups; CASES must name every
one of them (test_every_command_has_a_case), so a new command cannot escape these tests.

A case's command line uses junk inputs, so that whatever a command does after its cheap checks fails fast:
`@name` is a junk file made under tmp_path, `@name/` an empty folder, `!name` a path that does not exist,
`=name` a path under tmp_path the command may write (its -o).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import click
import pytest
from _train_helpers import colour_dataset
from click.testing import CliRunner

import segcls
from segcls.core.cli import _InputPath

ROOT = Path(__file__).resolve().parents[1]
try:
    import tomllib

    SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
except ModuleNotFoundError:  # Python 3.10: the installed entry points, made from the same table
    SCRIPTS = {e.name: e.value for e in metadata.entry_points(group="console_scripts") if e.value.startswith("segcls")}


def _load(spec: str) -> click.Command:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def _walk(name: str, command: click.Command):
    yield name, command
    if isinstance(command, click.Group):
        for sub, child in sorted(command.commands.items()):
            yield from _walk(f"{name} {sub}", child)


COMMANDS = {name: cmd for script, spec in SCRIPTS.items() for name, cmd in _walk(script, _load(spec))}
LEAVES = sorted(name for name, cmd in COMMANDS.items() if not isinstance(cmd, click.Group))


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]  # junk inputs, -o =OUTPUT
    output: str  # the -o path, relative to tmp_path
    folder: bool = False  # the output is a folder (a finished one holds `inside`)
    inside: str = "old.txt"
    missing: tuple[str, ...] | None = None  # one input missing, the others junk (None: the command reads none)
    fail: tuple[str, ...] | None = None  # a command line that fails [default: args]
    existing: str = "refuse"  # refuse | skip (the slides of a cohort) | continue (a sweep)


BENCH_OUT = ("-o", "=r.json")
CASES = {
    "segcls-train": Case(("@ds/", "-o", "=run", "--epochs", "1"), "run", folder=True, inside="best.pt",
                         missing=("!ds", "-o", "=run")),
    "segcls-eval": Case(("@best.pt", "@ds/", "-o", "=scores.json"), "scores.json",
                        missing=("@best.pt", "!ds", "-o", "=scores.json")),
    "segcls-synth dataset": Case(("-o", "=ds", "--images", "2", "--size", "64", "--labeled", "0"), "ds", folder=True,
                                 fail=("-o", "=ds", "--size", "100")),
    "segcls-synth slide": Case(("-o", "=s.tif", "--width", "64", "--height", "64", "--tile", "64"), "s.tif",
                               fail=("-o", "=s.tif", "--width", "64", "--height", "64", "--tile", "100")),
    "segcls-prepare bach": Case(("@raw/", "-o", "=ds"), "ds", folder=True, missing=("!raw", "-o", "=ds")),
    "segcls-prepare gleason2019": Case(("@raw/", "-o", "=ds"), "ds", folder=True, missing=("!raw", "-o", "=ds")),
    "segcls-prepare digestpath2019": Case(("@raw/", "-o", "=ds"), "ds", folder=True, missing=("!raw", "-o", "=ds")),
    "segcls-prepare glas": Case(("@raw/", "-o", "=ds"), "ds", folder=True, missing=("!raw", "-o", "=ds")),
    "segcls-prepare qupath": Case(("@s.tif", "-a", "@s.geojson", "-o", "=ds"), "ds", folder=True,
                                  missing=("@s.tif", "-a", "!s.geojson", "-o", "=ds")),
    "segcls-sweep": Case(("@ds/", "-o", "=sw", "--epochs", "1"), "sw", folder=True, existing="continue",
                         missing=("!ds", "-o", "=sw")),
    "segcls-export": Case(("@best.pt", "-o", "=m.onnx"), "m.onnx",
                          missing=("@best.pt", "-o", "=m.onnx", "--int8", "--calibrate", "!ds")),
    "segcls-infer": Case(("@s.png", "-o", "=m.tif", "--model", "@m.onnx"), "m.tif", existing="skip",
                         missing=("!s.png", "-o", "=m.tif", "--model", "@m.onnx", "--backend", "tensorrt")),
    "segcls-bench latency": Case(("@m.onnx", "--no-memory", "--rounds", "1", "--runs", "1", *BENCH_OUT), "r.json",
                                 missing=("!m.onnx", "--no-memory", *BENCH_OUT)),
    "segcls-bench slide": Case(("@s.png", "--model", "@m.onnx", "--rounds", "1", *BENCH_OUT), "r.json",
                               missing=("!s.png", "--model", "@m.onnx", *BENCH_OUT),
                               fail=("@s.png", "--model", "@m.onnx", "--option", "tile", *BENCH_OUT)),
    "segcls-bench readers": Case(("@s.png", "--rounds", "1", *BENCH_OUT), "r.json",
                                 missing=("!s.png", *BENCH_OUT)),
    "segcls-bench overlap": Case(("@s.png", "--model", "@m.onnx", *BENCH_OUT), "r.json",
                                 missing=("@s.png", "--model", "!m.onnx", *BENCH_OUT)),
    "segcls-bench mask-write": Case(("--sizes", "1024", "--rounds", "1", *BENCH_OUT), "r.json",
                                    missing=("--model", "!m.onnx", *BENCH_OUT),
                                    fail=("--sizes", "512", *BENCH_OUT)),
    "segcls-bench cluster": Case(("@s.png", "--model", "@m.onnx", "--dataset", "@ds/", *BENCH_OUT), "r.json",
                                 missing=("@s.png", "--model", "@m.onnx", "--dataset", "!ds", *BENCH_OUT),
                                 fail=("@s.png", "--model", "@m.onnx", "--dataset", "@ds/", "-o", "=no/r.json")),
    "segcls-bench geojson": Case(("--size", "64", "--rounds", "1", *BENCH_OUT), "r.json",
                                 fail=("-o", "=no/r.json")),
    "segcls-bench shapes": Case(("@m.onnx", "--rounds", "1", *BENCH_OUT), "r.json",
                                missing=("!m.onnx", *BENCH_OUT)),
    "segcls-bench view": Case(("--synthetic-size", "1024", "--no-cmu", "--requests", "1", "--clients", "1",
                               "--work", "=work", *BENCH_OUT), "r.json",
                              fail=("--clients", "0", "--work", "=work", *BENCH_OUT)),
    "segcls-view": Case(("@s.png", "-o", "=view"), "view", folder=True, missing=("!s.png", "-o", "=view")),
}  # fmt: skip


def command_line(tmp_path: Path, tokens: tuple[str, ...]) -> list[str]:
    """Make the junk inputs the tokens name and return the arguments."""
    args = []
    for token in tokens:
        kind, name = token[:1], token[1:]
        path = tmp_path / name.rstrip("/")
        if kind == "@":
            if name.endswith("/"):
                path.mkdir(exist_ok=True)
            else:
                path.write_bytes(b"junk")
        if kind in "@!=":
            args.append(str(path))
        else:
            args.append(token)
    return args


def invoke(name: str, args: list[str]) -> click.testing.Result:
    script, *sub = name.split()
    return CliRunner().invoke(COMMANDS[script], [*sub, *args])


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` and the sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def one_error_line(result: click.testing.Result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_every_command_has_a_case():
    assert sorted(CASES) == LEAVES
    assert {"segcls-bench mask-write", "segcls-prepare qupath", "segcls-synth slide"} <= set(LEAVES)


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(name, flag):
    result = invoke(name, [flag])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {name} ")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_version(name):
    result = invoke(name, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"{name.split()[0]} {segcls.__version__}\n"


@pytest.mark.parametrize("name", LEAVES)
def test_grammar_options(name):
    options = {opt: param for param in COMMANDS[name].params if isinstance(param, click.Option) for opt in param.opts}
    for short, long in (("-o", "--output"), ("-q", "--quiet"), (None, "--overwrite")):
        assert long in options, f"{name} has no {long}"
        assert short is None or options[long] is options[short], f"{name}: {short} is not {long}"
    assert options["--quiet"].is_flag and options["--overwrite"].is_flag


@pytest.mark.parametrize("name", LEAVES)
def test_every_option_says_what_it_is_and_its_default(name):
    for param in COMMANDS[name].params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        text = param.help or ""
        assert text, f"{name} {param.opts[0]} has no help"
        assert "{" not in text and "(x16)" not in text, f"{name} {param.opts[0]}: {text}"
        shown = param.is_flag or param.required or param.default not in (None, ())  # click shows the default
        assert shown or "[default:" in text, f"{name} {param.opts[0]} does not say its default"


@pytest.mark.parametrize("name", LEAVES)
def test_inputs_are_checked_while_parsing(name):
    """Every path argument of a command is an input checked to exist (or, for segcls-infer's SLIDES that may
    be globs, checked before the model is opened: test_missing_input_is_refused_before_any_work)."""
    for param in COMMANDS[name].params:
        if isinstance(param, click.Argument) and isinstance(param.type, click.Path):
            assert isinstance(param.type, _InputPath), f"{name} {param.human_readable_name}"


@pytest.mark.parametrize("name", LEAVES)
def test_a_finished_output_is_never_replaced_without_overwrite(name, tmp_path):
    case = CASES[name]
    output = tmp_path / case.output
    if case.folder:
        output.mkdir()
        (output / case.inside).write_text("finished")
    else:
        output.write_text("finished")
    before = tree(tmp_path)
    args = command_line(tmp_path, case.args)
    if case.existing == "continue":  # a sweep folder is continued: test_sweep_keeps_its_finished_runs
        output_help = next(p.help for p in COMMANDS[name].params if p.name == "output")
        assert "continued" in output_help
        return
    result = invoke(name, args)
    if case.existing == "skip":  # a slide whose outputs exist is skipped, and the line says how to redo it
        assert result.exit_code == 0, result.output
        assert "done already" in result.output and "--overwrite" in result.output
    else:
        assert result.exit_code == 2
        line = one_error_line(result)
        assert str(output) in line and "--overwrite" in line
    assert {k: v for k, v in tree(tmp_path).items() if k in before} == before


@pytest.mark.parametrize("name", [n for n in LEAVES if CASES[n].missing is not None])
def test_missing_input_is_refused_before_any_work(name, tmp_path):
    """The other inputs are junk: had the command read them first, it would fail on them instead."""
    case = CASES[name]
    args = command_line(tmp_path, case.missing)
    made = set(tmp_path.iterdir())
    result = invoke(name, args)
    assert result.exit_code == 2
    line = one_error_line(result)
    missing = next(t for t in case.missing if t.startswith("!"))[1:]
    assert str(tmp_path / missing) in line and ("not found" in line or "does not exist" in line)
    assert set(tmp_path.iterdir()) == made  # nothing written


@pytest.mark.parametrize("name", LEAVES)
def test_a_failed_command_leaves_nothing(name, tmp_path):
    case = CASES[name]
    args = command_line(tmp_path, case.fail or case.args)
    made = set(tmp_path.iterdir())
    result = invoke(name, [*args, "-q"])
    assert result.exit_code != 0, result.output
    assert "Error:" in result.output and "Traceback" not in result.output, result.output
    assert set(tmp_path.iterdir()) == made, result.output


# -- the rules on the commands that own folders ---------------------------------------------------------

TINY = ["--tile", "32", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return colour_dataset(tmp_path_factory.mktemp("grammar") / "colours", n_images=6, size=64)


def test_a_finished_run_survives_a_second_train_unchanged(dataset, tmp_path):
    run = tmp_path / "run"
    args = [str(dataset), "-o", str(run), *TINY]
    assert invoke("segcls-train", args).exit_code == 0
    before = tree(run)
    assert {"best.pt", "last.pt", "log.csv", "metrics.json"} <= set(before)
    again = invoke("segcls-train", args)
    assert again.exit_code == 2
    line = one_error_line(again)
    assert "--resume" in line and "--overwrite" in line
    assert tree(run) == before  # best.pt included: same sha256
    both = invoke("segcls-train", [*args, "--resume", "--overwrite"])
    assert both.exit_code == 2 and "choose one" in one_error_line(both)
    assert invoke("segcls-train", [*args, "--overwrite", "--seed", "1"]).exit_code == 0
    assert tree(run)["best.pt"] != before["best.pt"]


def test_a_failed_train_leaves_no_run_folder(dataset, tmp_path):
    result = invoke("segcls-train", [str(tmp_path / "nope"), "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and not (tmp_path / "run").exists()
    (tmp_path / "junk.pt").write_bytes(b"junk")
    # the run folder is made once the dataset is read; the junk encoder weights fail after that
    junk = ["--pretrained", str(tmp_path / "junk.pt")]
    result = invoke("segcls-train", [str(dataset), "-o", str(tmp_path / "run"), *junk, *TINY])
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt"]


def test_a_failed_sweep_leaves_nothing(dataset, tmp_path):
    result = invoke("segcls-sweep", ["nope", "-o", str(tmp_path / "sw")])
    assert result.exit_code == 2 and not (tmp_path / "sw").exists()
    (tmp_path / "junk.pt").write_bytes(b"junk")
    args = [str(dataset), "-o", str(tmp_path / "sw"), "--settings", "S", "--fractions", "1", "--seeds", "1"]
    result = invoke("segcls-sweep", [*args, "--pretrained", str(tmp_path / "junk.pt"), *TINY])
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt"]  # no sw/, no sw/runs/...


def test_sweep_keeps_its_finished_runs(dataset, tmp_path):
    from segcls.train import TrainConfig

    options = dict(tile=32, epochs=1, steps_per_epoch=2, batch_size=8, device="cpu")
    config = TrainConfig(dataset=str(dataset), out_dir="", setting="S", seg_fraction=1.0, **options)
    run = tmp_path / "sw" / "runs" / "S_s1_seed0"
    run.mkdir(parents=True)
    metrics = {"macro_f1": 0.5, "micro_f1": 0.5, "cls_accuracy": None, "train_tiles": {"seg": 1, "cls": 0}}
    (run / "metrics.json").write_text(json.dumps({**metrics, "config": asdict(config)}))
    before = tree(run)
    args = [str(dataset), "-o", str(tmp_path / "sw"), "--settings", "S", "--fractions", "1", "--seeds", "1", *TINY]
    result = invoke("segcls-sweep", args)
    assert result.exit_code == 0, result.output
    assert tree(run) == before  # not retrained
    assert (tmp_path / "sw" / "summary.md").is_file()


def test_overwrite_replaces_a_slide(tmp_path):
    out = tmp_path / "s.tif"
    args = ["-o", str(out), "--width", "64", "--height", "64", "--tile", "64", "-q"]
    assert invoke("segcls-synth slide", args).exit_code == 0
    first = out.read_bytes()
    assert invoke("segcls-synth slide", args).exit_code == 2
    assert invoke("segcls-synth slide", [*args, "--seed", "1", "--overwrite"]).exit_code == 0
    assert out.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_bench_writes_into_the_working_directory_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("segcls-bench geojson", ["--size", "64", "--rounds", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench-geojson.json", "bench-geojson.md"]
    package = Path(importlib.import_module("segcls.bench").__file__).parent
    assert not list(package.glob("**/bench-geojson.*"))
