import csv
import dataclasses

import numpy as np
import pytest
from _train_helpers import colour_dataset
from click.testing import CliRunner

import segcls.train
from segcls.cli.sweep import main as sweep_main
from segcls.core.errors import SegclsError
from segcls.data.settings import select_tiles_cls_task
from segcls.sweep import summary_markdown


def test_sweep_runs_grid_writes_outputs_and_resumes(tmp_path, monkeypatch):
    dataset = colour_dataset(tmp_path / "ds")
    args = [str(dataset), "-o", str(tmp_path / "sweep"), "--settings", "S,S+C", "--fractions", "0,1"]
    args += ["--seeds", "1", "--epochs", "1", "--steps-per-epoch", "2", "--tile", "32", "--batch-size", "8", "-q"]
    result = CliRunner().invoke(sweep_main, args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "sweep" / "results.csv").read_text().splitlines()))
    assert sorted((r["setting"], float(r["fraction"])) for r in rows) == [("S", 0), ("S", 1), ("S+C", 0), ("S+C", 1)]
    by_key = {(r["setting"], float(r["fraction"])): r for r in rows}
    assert int(by_key[("S", 0)]["cls_tiles"]) == 0 and int(by_key[("S+C", 0)]["cls_tiles"]) > 0
    assert int(by_key[("S+C", 1)]["cls_tiles"]) == 0  # the complement of 100% is empty
    summary = (tmp_path / "sweep" / "summary.md").read_text()
    assert "| 100% |" in summary and "S+C vs S" in summary
    assert (tmp_path / "sweep" / "f1_vs_fraction.png").read_bytes()[:4] == b"\x89PNG"

    def must_not_train(*a, **k):
        raise AssertionError("finished runs must be skipped")

    monkeypatch.setattr(segcls.train, "train", must_not_train)
    assert CliRunner().invoke(sweep_main, args).exit_code == 0


def test_sweep_rejects_bad_settings_and_fractions(tmp_path):
    base = [str(tmp_path), "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(sweep_main, [*base, "--settings", "S,X"])
    assert result.exit_code == 2 and "settings are" in result.output
    result = CliRunner().invoke(sweep_main, [*base, "--fractions", "0,5"])
    assert result.exit_code == 2 and "fractions" in result.output
    result = CliRunner().invoke(sweep_main, [*base, "--task", "cls", "--settings", "S+C*"])
    assert result.exit_code == 2 and "C, S+C, S*+C" in result.output


def _row(setting, fraction, seed, macro):
    return {"task": "seg", "setting": setting, "fraction": fraction, "seed": seed, "macro_f1": macro,
            "micro_f1": macro, "cls_accuracy": None, "seg_tiles": 1, "cls_tiles": 1}  # fmt: skip


def test_summary_means_stds_and_the_claim():
    rows = [_row("S", 0.05, 0, 0.30), _row("S", 0.05, 1, 0.34), _row("S+C", 0.05, 0, 0.40),
            _row("S+C", 0.05, 1, 0.40), _row("S", 1.0, 0, 0.5), _row("S+C", 1.0, 0, 0.5)]  # fmt: skip
    text = summary_markdown(rows)
    assert "32.0 +- 2.0 [0.64] (n=2)" in text  # S at 5%: mean .32, std .02, relative to S at 100% = .5
    assert "S+C vs S: +25.0% relative macro F1 (holds)" in text


class _Tiles:
    """The fields select_tiles_cls_task reads."""

    def __init__(self, kinds, labels):
        self.kinds, self.labels = np.array(kinds, np.uint8), np.array(labels, np.int16)


def test_cls_task_selection_counts_nesting_and_one_per_class():
    kinds = [1] * 40 + [0] * 20
    labels = [i % 4 for i in range(40)] + [-1] * 20
    tiles = _Tiles(kinds, labels)
    small = select_tiles_cls_task(tiles, "C", 0.1, seed=3)
    large = select_tiles_cls_task(tiles, "C", 0.5, seed=3)
    assert small.seg.size == 0 and 4 <= small.cls.size <= 8 and large.cls.size >= 20
    assert set(small.cls) <= set(large.cls)
    assert set(np.asarray(labels)[select_tiles_cls_task(tiles, "C", 0.0, seed=3).cls]) == {0, 1, 2, 3}
    assert select_tiles_cls_task(tiles, "S+C", 0.25, seed=3).seg.size == 15  # the (1 - c) complement
    assert select_tiles_cls_task(tiles, "S*+C", 0.25, seed=3).seg.size == 20
    with pytest.raises(ValueError, match="setting"):
        select_tiles_cls_task(tiles, "S+C*", 0.1)


def test_full_preset_fills_unset_options_and_explicit_ones_win(tmp_path, monkeypatch):
    import segcls.sweep
    from segcls.cli.sweep import FULL

    seen = []
    monkeypatch.setattr(segcls.sweep, "run_sweep", lambda config, progress: seen.append(config) or [])
    base = [str(tmp_path), "-o", str(tmp_path / "o"), "-q"]
    assert CliRunner().invoke(sweep_main, [*base, "--full"]).exit_code == 0
    config = seen[-1]
    assert config.fractions == segcls.sweep.FULL_FRACTIONS == (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
    assert config.seeds == FULL["seeds"] and config.jobs == FULL["jobs"] and config.threads == FULL["threads"]
    assert {k: config.train_options[k] for k in ("epochs", "steps_per_epoch", "batch_size", "tile")} == {
        k: FULL[k] for k in ("epochs", "steps_per_epoch", "batch_size", "tile")
    }
    extra = ["--full", "--epochs", "3", "--jobs", "1", "--seeds", "4", "--fractions", "0,1"]
    assert CliRunner().invoke(sweep_main, [*base, *extra]).exit_code == 0
    config = seen[-1]
    assert (config.train_options["epochs"], config.jobs, config.seeds, config.fractions) == (3, 1, 4, (0.0, 1.0))
    assert config.train_options["tile"] == FULL["tile"]
    result = CliRunner().invoke(sweep_main, [*base, "--full", "--quick"])
    assert result.exit_code == 2 and "choose one" in result.output


def test_sweep_order_resume_and_the_shared_zero_run(tmp_path, monkeypatch):
    """s = 100 % first; S+C* at s = 0 is S+C's run; a run with last.pt only is resumed; rows after each run."""
    import segcls.sweep

    calls = []

    def fake_train(run, resume=False, progress=True, overwrite=False):
        calls.append((run.setting, run.seg_fraction, run.seed, resume))
        out = segcls.sweep.Path(run.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        metrics = {"macro_f1": 0.5, "micro_f1": 0.5, "cls_accuracy": None, "train_tiles": {"seg": 1, "cls": 0}}
        (out / "metrics.json").write_text(segcls.sweep.json.dumps(metrics))
        assert not calls[1:] or (tmp_path / "o" / "results.csv").is_file()  # written after the first run

    monkeypatch.setattr(segcls.train, "train", fake_train)
    config = segcls.sweep.SweepConfig(str(tmp_path), str(tmp_path / "o"), ("S", "S+C", "S+C*"), (0.0, 1.0), 2)
    stopped = segcls.sweep.run_dir(tmp_path / "o", "seg", "S", 0.0, 1)
    stopped.mkdir(parents=True)
    (stopped / "last.pt").write_bytes(b"")
    rows = segcls.sweep.run_sweep(config, progress=False)
    assert calls[:3] == [("S", 1.0, 0, False), ("S+C", 1.0, 0, False), ("S+C*", 1.0, 0, False)]
    assert ("S", 0.0, 1, True) in calls  # resumed from its last.pt
    assert [c for c in calls if c[:2] == ("S+C*", 0.0)] == []  # S+C at 0 is the same run
    assert len(calls) == 10 and len(rows) == 12
    assert {r["setting"] for r in rows if r["fraction"] == 0.0} == {"S", "S+C", "S+C*"}


def test_convergence_column_and_report_only(tmp_path, monkeypatch):
    import segcls.sweep

    out = tmp_path / "o"
    for seed, curve in enumerate([(0.2, 0.50, 0.505, 0.508), (0.2, 0.4, 0.5, 0.6)]):
        run = segcls.sweep.run_dir(out, "seg", "S", 1.0, seed)
        run.mkdir(parents=True)
        metrics = {"macro_f1": 0.5, "micro_f1": 0.5, "cls_accuracy": None, "train_tiles": {"seg": 9, "cls": 0}}
        (run / "metrics.json").write_text(segcls.sweep.json.dumps(metrics))
        log = "epoch,val_macro_f1\n" + "".join(f"{i + 1},{v}\n" for i, v in enumerate(curve))
        (run / "log.csv").write_text(log)
    monkeypatch.setattr(segcls.train, "train", lambda *a, **k: pytest.fail("--report must not train"))
    args = [str(tmp_path), "-o", str(out), "--settings", "S", "--fractions", "0,1", "--seeds", "2", "--report", "-q"]
    result = CliRunner().invoke(sweep_main, args)  # s = 0 is missing: reported without it
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert [round(float(r["val_f1_last3_change"]), 3) for r in rows] == [0.008, 0.2]
    summary = (out / "summary.md").read_text()
    assert "S seed 0: 0.8 points (flat)" in summary and "S seed 1: 20.0 points (still moving)" in summary


def test_more_epochs_resume_finished_runs(tmp_path, monkeypatch):
    import segcls.sweep

    calls = []
    monkeypatch.setattr(
        segcls.train, "train", lambda run, resume=False, progress=True, overwrite=False: calls.append(resume)
    )
    run = segcls.sweep.run_dir(tmp_path / "o", "seg", "S", 1.0, 0)
    run.mkdir(parents=True)
    made = segcls.train.TrainConfig(dataset=str(tmp_path), out_dir=str(run), epochs=4, setting="S", seg_fraction=1.0)
    config = {**dataclasses.asdict(made), "seed": 0}
    metrics = {"macro_f1": 0.5, "micro_f1": 0.5, "train_tiles": {"seg": 1, "cls": 0}, "config": config}
    (run / "metrics.json").write_text(segcls.sweep.json.dumps(metrics))
    (run / "last.pt").write_bytes(b"")

    def sweep(epochs, **options):
        config = segcls.sweep.SweepConfig(str(tmp_path), str(tmp_path / "o"), ("S",), (1.0,), 1)
        config.train_options = {"epochs": epochs, **options}
        segcls.sweep.run_sweep(config, progress=False)

    sweep(4)
    assert calls == []  # as long as asked: done
    sweep(8)
    assert calls == [True]  # longer: continued from last.pt
    with pytest.raises(SegclsError, match=r"S_s1_seed0 holds a run made with other settings \(tile\)"):
        sweep(4, tile=made.tile // 2)  # another preset in the same folder: refused, not mixed into the results
    assert calls == [True]


def test_overwrite_retrains_finished_runs_from_scratch(tmp_path, monkeypatch):
    import segcls.sweep

    calls = []
    monkeypatch.setattr(
        segcls.train,
        "train",
        lambda run, resume=False, progress=True, overwrite=False: calls.append((resume, overwrite)),
    )
    run = segcls.sweep.run_dir(tmp_path / "o", "seg", "S", 1.0, 0)
    run.mkdir(parents=True)
    made = segcls.train.TrainConfig(dataset=str(tmp_path), out_dir=str(run), setting="S", seg_fraction=1.0)
    metrics = {"macro_f1": 0.5, "micro_f1": 0.5, "train_tiles": {"seg": 1, "cls": 0}}
    (run / "metrics.json").write_text(segcls.sweep.json.dumps({**metrics, "config": dataclasses.asdict(made)}))
    (run / "last.pt").write_bytes(b"")
    config = segcls.sweep.SweepConfig(str(tmp_path), str(tmp_path / "o"), ("S",), (1.0,), 1)
    segcls.sweep.run_sweep(config, progress=False)
    assert calls == []  # finished: kept
    segcls.sweep.run_sweep(dataclasses.replace(config, overwrite=True), progress=False)
    assert calls == [(False, True)]  # not resumed from its last.pt: replaced
