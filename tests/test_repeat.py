"""`budgetnet repeat` and the K-fold split under it: stratified folds that partition the
training images, `data.fold` in configs (old configs unchanged), a repeat killed in its second
member and continued (every seed trained to the end exactly once, the cut one resumed to the
numbers of an uninterrupted run), K-fold cross validation through the CLI, the statistics and
markdown table, bad options as one-line errors, and `budgetnet compare` of two repeats seed by
seed (and what it refuses to pair).

Members are 1,443-parameter networks trained for 2 epochs on 240 noisy 16x16 images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_run_config, write_noisy_npz
from hypothesis import given, settings
from hypothesis import strategies as st

import budgetnet.repeat as repeat_mod
from budgetnet.cli import main
from budgetnet.config import build_config, load_config
from budgetnet.data import DataConfig, prepare_data
from budgetnet.data.splits import stratified_fold, stratified_split
from budgetnet.errors import BudgetnetError
from budgetnet.repeat import run_repeat
from budgetnet.train.callbacks import read_metrics
from budgetnet.train.engine import train

TINY = ["--input-size", "16", "--val-size", "60", "--blocks", "1", "--channels", "8", "--classes", "3", "--epochs", "2",
        "--batch-size", "30", "--lr", "0.1", "--precision", "fp32", "--threads", "1", "--device", "cpu", "--quiet",
        "--time-budget", "1e6"]


class Stop(Exception):
    """Raised from on_epoch_end: the repeat dies in the middle of a member, as on a kill."""


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_noisy_npz(tmp_path / "data.npz", 240, seed=0)


# ---- folds -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=2, max_size=200).map(np.array), of=st.integers(2, 7),
       seed=st.integers(0, 2**32 - 1))
def test_folds_partition_and_stratify(labels: np.ndarray, of: int, seed: int) -> None:
    if of > len(labels):
        with pytest.raises(BudgetnetError):
            stratified_fold(labels, 0, of, seed)
        return
    vals = []
    for k in range(of):
        train_idx, val_idx = stratified_fold(labels, k, of, seed)
        assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(len(labels)))
        assert (np.diff(val_idx) > 0).all()
        for c in np.unique(labels):  # each class within one image of its share
            assert abs((labels[val_idx] == c).sum() - (labels == c).sum() / of) < 1
        assert abs(len(val_idx) - len(labels) / of) < 1
        vals.append(val_idx)
        assert np.array_equal(stratified_fold(labels, k, of, seed)[1], val_idx)  # seeded
    everything = np.concatenate(vals)
    assert np.array_equal(np.sort(everything), np.arange(len(labels)))  # the folds partition the images


def test_fold_in_the_data_config(data: Path) -> None:
    with pytest.raises(BudgetnetError, match="fold"):
        build_config({"data": {"fold": {"k": 3, "of": 3}}})
    with pytest.raises(BudgetnetError, match="val_size is 0"):
        build_config({"data": {"fold": {"k": 0, "of": 3}, "val_size": 0}})
    # A config without a fold splits exactly as before.
    assert load_config(overrides={"data": {"path": "x"}}).data.fold is None
    plain = prepare_data(DataConfig(path=str(data), input_size=16, val_size=60), "cpu")
    labels = np.load(data)["y"]
    _, val_idx = stratified_split(labels, 60, 0)
    assert np.array_equal(plain.val.y.numpy(), labels[val_idx])
    # With a fold, the fold is the validation split and val_size is not used.
    folded = prepare_data(DataConfig(path=str(data), input_size=16, val_size=60, fold={"k": 1, "of": 4}), "cpu")
    train_idx, val_idx = stratified_fold(labels, 1, 4, 0)
    assert len(folded.val.y) == 60 and np.array_equal(folded.val.y.numpy(), labels[val_idx])
    assert len(folded.train.y) == len(train_idx) == 180


# ---- a killed repeat ---------------------------------------------------------------------


def test_killed_repeat_continues_and_trains_every_seed_once(data: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = tiny_run_config(data)
    out = tmp_path / "rep"
    calls: list[tuple[str, bool]] = []
    real_train = repeat_mod.train

    def counted(cfg, run_dir, *, resume, **kwargs):  # noqa: ANN001, ANN202 - a spy on the real train
        calls.append((Path(run_dir).name, resume))
        return real_train(cfg, run_dir, resume=resume, **kwargs)

    monkeypatch.setattr(repeat_mod, "train", counted)

    def kill_in_seed_1(member: str, row: dict[str, float]) -> None:
        if member == "seed-1" and row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        run_repeat(cfg, out, seeds=[0, 1, 2], on_epoch_end=kill_in_seed_1)
    assert calls == [("seed-0", False), ("seed-1", False)]
    assert (out / "seed-0" / "summary.json").is_file() and not (out / "seed-1" / "summary.json").exists()
    assert len(read_metrics(out / "seed-1" / "metrics.csv")) == 1 and not (out / "seed-2").exists()
    assert not (out / "summary.json").exists()

    result = run_repeat(cfg, out, seeds=[0, 1, 2])
    assert calls[2:] == [("seed-1", True), ("seed-2", False)]  # seed-0 was not trained again
    for seed in (0, 1, 2):
        assert [int(r["epoch"]) for r in read_metrics(out / f"seed-{seed}" / "metrics.csv")] == [1, 2]
    # The resumed member ends where an uninterrupted run of its seed ends.
    whole = train(tiny_run_config(data, train={"seed": 1}), tmp_path / "whole", quiet=True).summary
    resumed = json.loads((out / "seed-1" / "summary.json").read_text())
    for key in ("final_val_acc", "best_val_acc", "best_epoch", "final_train_acc"):
        assert resumed[key] == pytest.approx(whole[key]), key

    finals = [json.loads((out / f"seed-{s}" / "summary.json").read_text())["final_val_acc"] for s in (0, 1, 2)]
    stats = result.summary["final_val_acc"]
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(np.mean(finals))
    assert stats["std"] == pytest.approx(np.std(finals, ddof=1)) and stats["min"] == min(finals) and stats["max"] == max(finals)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(result.summary))
    assert f"| final validation accuracy | {100 * np.mean(finals):.2f}% |" in (out / "summary.md").read_text()

    # Done: running again trains nothing; more seeds train only the new one.
    run_repeat(cfg, out, seeds=[0, 1, 2])
    run_repeat(cfg, out, seeds=[0, 1, 2, 3])
    assert calls[4:] == [("seed-3", False)]
    # A later call naming one new seed trains it and summarizes every finished seed in the folder.
    more = run_repeat(cfg, out, seeds=[5])
    assert calls[5:] == [("seed-5", False)]
    assert [m["seed"] for m in more.summary["members"]] == [0, 1, 2, 3, 5] and more.summary["final_val_acc"]["n"] == 5
    assert (out / "summary.md").read_text().count("| seed-") == 5
    with pytest.raises(BudgetnetError, match="another config"):
        run_repeat(tiny_run_config(data, optim={"lr": 0.05}), out, seeds=[0])
    # A repeat.json written before a setting existed (here: without whiten_eps) still continues
    # with the same options, the setting at its default; a config that no longer validates does not.
    plan = json.loads((out / "repeat.json").read_text())
    del plan["config"]["model"]["whiten_eps"]
    (out / "repeat.json").write_text(json.dumps(plan))
    run_repeat(cfg, out, seeds=[6])
    assert calls[6:] == [("seed-6", False)]
    plan["config"]["model"]["blocks"] = "many"
    (out / "repeat.json").write_text(json.dumps(plan))
    with pytest.raises(BudgetnetError, match="another config"):
        run_repeat(cfg, out, seeds=[7])


# ---- the command -------------------------------------------------------------------------


def test_kfold_repeat_through_the_cli(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "kfold"
    code = main(["repeat", "--folds", "3", "--data", str(data), *TINY, "--out", str(out), "--seed", "4", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert [m["member"] for m in summary["members"]] == ["fold-0-of-3", "fold-1-of-3", "fold-2-of-3"]
    seen = []
    for k, member in enumerate(summary["members"]):
        cfg = load_config(out / member["run_dir"] / "config.yaml")
        assert cfg.data.fold.k == k and cfg.data.fold.of == 3 and cfg.train.seed == 4 and cfg.train.epochs == 2
        run_summary = json.loads((out / member["run_dir"] / "summary.json").read_text())
        assert member["best_val_acc"] == run_summary["best_val_acc"]
        assert sum(run_summary["data"]["counts"]["val"].values()) == 80
        seen.append(member["final_val_acc"])
    assert summary["final_val_acc"]["mean"] == pytest.approx(np.mean(seen))
    table = (out / "summary.md").read_text()
    assert table.count("| fold-") == 3 and "| best validation accuracy |" in table

    # The same command again: nothing to train, the same table.
    assert main(["repeat", "--folds", "3", "--data", str(data), *TINY, "--out", str(out), "--seed", "4"]) == 0
    assert capsys.readouterr().out.startswith(table)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0,1", "--folds", "2"], "one of them"),
    ([], "one of them"),
    (["--seeds", "0,x"], "comma-separated"),
    (["--seeds", "1,1"], "distinct"),
    (["--seeds", "0,1", "--seed", "3"], "drop --seed"),
    (["--folds", "1"], "at least 2"),
    (["--seeds", "0", "--resume", "somewhere"], "drop --resume"),
    (["--seeds", "0", "--val-size", "0"], "--val-size is 0"),
    (["--seeds", "0", "--no-such-option"], "No such option"),
])
def test_bad_options_are_one_line_errors(argv: list[str], message: str, data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    assert main(["repeat", "--data", str(data), *TINY, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("budgetnet: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


# ---- compare -----------------------------------------------------------------------------


def test_compare_pairs_members_by_seed(data: Path, tmp_path: Path, capsys) -> None:
    base, change = tmp_path / "base", tmp_path / "change"
    assert main(["repeat", "--seeds", "0,1,2", "--data", str(data), *TINY, "--out", str(base), "--json"]) == 0
    assert main(["repeat", "--seeds", "1,2", "--data", str(data), *TINY, "--out", str(change), "--json",
                 "--set", "optim.lr=0.05"]) == 0
    capsys.readouterr()
    members = {folder: {m["seed"]: m for m in json.loads((folder / "summary.json").read_text())["members"]}
               for folder in (base, change)}

    for best, metric in ((False, "final_val_acc"), (True, "best_val_acc")):
        assert main(["compare", str(base), str(change), "--json", *(["--best"] if best else [])]) == 0
        c = json.loads(capsys.readouterr().out)
        assert c["metric"] == metric
        # Seed 0 has no partner; seeds 1 and 2 pair, each with its own runs' figures.
        assert [(p["seed"], p["base"], p["other"]) for p in c["pairs"]] == [
            (s, members[base][s][metric], members[change][s][metric]) for s in (1, 2)]
        diffs = [members[change][s][metric] - members[base][s][metric] for s in (1, 2)]
        assert c["paired"]["mean"] == pytest.approx(np.mean(diffs))
        assert c["paired"]["standard_error"] == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(2))
        assert c["paired"]["ahead"] == sum(d > 0 for d in diffs) and c["paired"]["behind"] == sum(d < 0 for d in diffs)
        # Unpaired: every member of each, seed 0 of the base included.
        assert c["base_all"]["n"] == 3 and c["other_all"]["n"] == 2
        assert c["unpaired"]["difference"] == pytest.approx(
            np.mean([m[metric] for m in members[change].values()]) - np.mean([m[metric] for m in members[base].values()]))
        assert c["config_differences"] == ["optim.lr: 0.1 -> 0.05"]

    assert main(["compare", str(base), str(change)]) == 0
    table = capsys.readouterr().out
    assert table.count("| seed-") == 2 and "| seed-0 |" not in table
    assert "2 pairs" in table and "configs differ in: optim.lr: 0.1 -> 0.05" in table
    # A run trained before a setting existed compares as trained at the setting's default.
    saved = yaml.safe_load((base / "seed-1" / "config.yaml").read_text())
    del saved["model"]["whiten_eps"]
    (base / "seed-1" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert main(["compare", str(base), str(change), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config_differences"] == ["optim.lr: 0.1 -> 0.05"]


def test_compare_refuses_what_does_not_pair(data: Path, tmp_path: Path, capsys) -> None:
    base, other_split = tmp_path / "base", tmp_path / "split-1"
    assert main(["repeat", "--seeds", "0", "--data", str(data), *TINY, "--out", str(base), "--json"]) == 0
    assert main(["repeat", "--seeds", "0", "--data", str(data), *TINY, "--out", str(other_split), "--json",
                 "--split-seed", "1"]) == 0
    other_data = tmp_path / "other-data"
    assert main(["repeat", "--seeds", "0", "--data", str(write_noisy_npz(tmp_path / "other.npz", 240, seed=1)), *TINY,
                 "--out", str(other_data), "--json"]) == 0
    elsewhere = tmp_path / "seed-5-only"
    elsewhere.mkdir()
    (elsewhere / "summary.json").write_text(json.dumps({"members": [
        {**json.loads((base / "summary.json").read_text())["members"][0], "seed": 5}]}))
    capsys.readouterr()
    # One pair (a repeat against itself): figures without a standard error, no config difference.
    assert main(["compare", str(base), str(base)]) == 0
    table = capsys.readouterr().out
    assert "+0.00 points (no standard error: one value)" in table and "configs differ in: nothing" in table
    for other, message in ((other_split, "validate on different images (data.split_seed: 0 vs 1)"),
                           (other_data, "trained on different datasets"),
                           (elsewhere, "share no seed"),
                           (tmp_path / "missing", "is not a repeat folder (no summary.json)")):
        assert main(["compare", str(base), str(other)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("budgetnet: error: ") and captured.err.count("\n") == 1
        assert message in captured.err, captured.err
