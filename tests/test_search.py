"""`budgetnet search`: space files, over-budget rejection, pruning, resuming (workers sharing a study: test_search_workers.py).

Every search here trains a ~5k-parameter ResNet on 300 synthetic 16x16 images for 1-2 epochs,
so a trial costs about a second; the whole module stays well under a minute of CPU.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

import budgetnet.search as search_mod
from budgetnet.cli import main
from budgetnet.config import load_config
from budgetnet.errors import BudgetnetError
from budgetnet.models import count_params
from budgetnet.search import ParamSpec, SearchSpace, load_space, run_search
from budgetnet.search_workers import StudyStore
from budgetnet.train.engine import TrainingInterrupted

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "search"

TINY = {
    "model": {"blocks": [1, 1], "channels": [8, 16], "input_size": 16, "classes": 3},
    "data": {"input_size": 16, "val_size": 60},
    "train": {"epochs": 2, "batch_size": 60, "device": "cpu", "threads": 1, "precision": "fp32", "tta": False},
    "schedule": {"name": "constant"},
    "optim": {"lr": 0.1},
    "augment": {},
}
# [8, 16] is 5,147 parameters, [8, 24] 8,739 and [64, 128] 306,371: over the 20k budget.
SHAPES = {"small": {"channels": [8, 16]}, "wide": {"channels": [8, 24]}, "huge": {"channels": [64, 128]}}


def write_space(path: Path, **fields: Any) -> Path:
    path.write_text(yaml.safe_dump({"base": TINY, "budget": "20k", **fields}, sort_keys=False))
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def study_trials(out: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=StudyStore(out).storage()).get_trials()


class TrainSpy:
    """Wraps the search's `train` to record every config it was asked to train."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, train: Any = None) -> None:
        self.calls: list[tuple[Any, Path, bool]] = []
        self._train = train or search_mod.train
        monkeypatch.setattr(search_mod, "train", self)

    def __call__(self, cfg: Any, out: Path, **kwargs: Any) -> Any:
        self.calls.append((cfg, Path(out), kwargs.get("resume", False)))
        return self._train(cfg, out, **kwargs)


# ---- a whole search through the CLI --------------------------------------------------------


def test_search_cli_rejects_over_budget_resumes_and_reports(tmp_path, search_data, capsys, monkeypatch) -> None:
    spy = TrainSpy(monkeypatch)
    space = write_space(tmp_path / "tiny.yaml", sampler="grid", params={
        "model": {"merge": True, "choices": SHAPES},
        "optim.lr": {"choices": [0.05, 0.1]},
    })
    out = tmp_path / "search"
    args = ["search", "--space", str(space), "--data", str(search_data), "--out", str(out), "--seed", "0", "--pruner", "none"]

    code, stdout, err = run_cli(capsys, *args, "--trials", "3")
    assert code == 0, err
    assert len(study_trials(out, "tiny")) == 3
    assert "no parameter importance" in stdout and not (out / "importance.png").exists()  # under 4 complete

    code, stdout, err = run_cli(capsys, *args, "--trials", "6", "--json")  # continues: 3 more, not 6
    assert code == 0, err
    summary = json.loads(stdout)
    trials = study_trials(out, "tiny")
    assert len(trials) == 6 and summary["trials"]["total"] == 6
    assert summary["trials"]["over budget"] == 2 and summary["trials"]["complete"] == 4

    # Over-budget candidates were counted, never trained, and left no run directory.
    over = [t for t in trials if t.user_attrs.get("over_budget")]
    assert {t.params["model"] for t in over} == {"huge"}
    assert all(t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["params"] == 306_371 for t in over)
    assert not any((out / "trials" / str(t.number)).exists() for t in over)
    assert len(spy.calls) == 4 and all(count_params(cfg.model) <= 20_000 for cfg, _, _ in spy.calls)
    assert sorted(p.name for p in (out / "trials").iterdir()) == sorted(
        str(t.number) for t in trials if t.state == optuna.trial.TrialState.COMPLETE)

    for name in ("trials.csv", "pareto.png", "importance.png", "best.yaml", "summary.json", "study.journal"):
        assert (out / name).is_file(), name
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("rank,trial,state,val_acc,params,flops,epochs,train_seconds")
    assert len(rows) == 7 and rows[-1].split(",")[2] == "over budget"
    assert summary["importance"] and set(summary["importance"]) <= {"model", "optim.lr"}

    # best.yaml is the best trial's full config, and `budgetnet train` takes it as is.
    best = summary["best"]
    assert best["val_acc"] == max(t.value for t in trials if t.value is not None and t.state.name == "COMPLETE")
    cfg = load_config(out / "best.yaml")
    assert cfg.model_dump() == next(c for c, d, _ in spy.calls if d.name == str(best["trial"])).model_dump()
    code, _, err = run_cli(capsys, "train", "--config", str(out / "best.yaml"), "--out", str(tmp_path / "retrain"),
                           "--epochs", "1", "--quiet")
    assert code == 0, err


def test_table_printed_without_json(tmp_path, search_data, capsys) -> None:
    space = write_space(tmp_path / "one.yaml", params={"optim.lr": {"choices": [0.1]}}, epochs=1)
    code, out, err = run_cli(capsys, "search", "--space", str(space), "--data", str(search_data), "--out",
                             str(tmp_path / "s"), "--trials", "1", "--pruner", "none")
    assert code == 0, err
    assert "rank" in out and "val acc" in out and "lr=0.1" in out and "budgetnet train --config" in out
    assert "trial 0: val acc" in err  # one line per finished trial
    assert "no parameter importance" in out and not (tmp_path / "s" / "importance.png").exists()


# ---- pruning, interruption --------------------------------------------------------------


def test_weak_trial_is_pruned_after_its_first_epoch(tmp_path, search_data) -> None:
    """Successive halving keeps a third of the trials at each rung (1, 3, ... epochs): a trial
    far below the first rung's best stops there. The study first gets a good trial, then a
    space whose base learning rate is too small to learn anything in an epoch."""
    params = {"train.label_smoothing": {"choices": [0.0]}}
    good = SearchSpace.model_validate({"base": TINY, "budget": "20k", "params": params})
    awful = SearchSpace.model_validate({"base": {**TINY, "optim": {"lr": 1e-7}}, "budget": "20k", "params": params})
    kwargs = dict(out=tmp_path / "s", pruner="halving", data_overrides={"path": str(search_data)})
    run_search(good, trials=1, **kwargs)
    result = run_search(awful, trials=2, **kwargs)
    weak = next(r for r in result.rows if r["trial"] == 1)
    assert weak["state"] == "pruned" and weak["note"] == "pruned after epoch 1" and weak["epochs"] == 1
    assert weak["val_acc"] < result.best["val_acc"] and result.best["trial"] == 0
    assert not (tmp_path / "s" / "trials" / "1" / "last.pt").exists()  # finished trials drop resume checkpoints


def test_interrupted_trial_resumes_from_its_checkpoint(tmp_path, search_data, monkeypatch) -> None:
    space = SearchSpace.model_validate({"base": TINY, "budget": "20k", "params": {"optim.lr": {"low": 0.05, "high": 0.2}}})
    kwargs = dict(out=tmp_path / "s", pruner="none", data_overrides={"path": str(search_data)})
    real_train = search_mod.train

    def interrupted(cfg: Any, out: Path, **kw: Any) -> Any:
        def stop(row: dict[str, float]) -> None:
            raise TrainingInterrupted(signal.SIGINT, out)  # as a Ctrl-C after epoch 1's checkpoint

        return real_train(cfg, out, **{**kw, "on_epoch_end": stop})

    monkeypatch.setattr(search_mod, "train", interrupted)
    with pytest.raises(TrainingInterrupted):
        run_search(space, trials=1, **kwargs)
    spy = TrainSpy(monkeypatch, real_train)
    result = run_search(space, trials=1, **kwargs)

    first, retry = study_trials(tmp_path / "s", "search")
    assert first.state.name == "FAIL" and retry.state.name == "COMPLETE"
    assert retry.params == first.params and retry.user_attrs["note"] == "resumed trial 0"
    assert [(d.name, resume) for _, d, resume in spy.calls] == [("0", True)]
    assert retry.intermediate_values.keys() == {1, 2}  # epoch 1 replayed from metrics.csv, epoch 2 trained
    assert result.best["run_dir"] == "trials/0" and result.counts["failed"] == 1


# ---- space files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("params: {optim.lr: {choices: [0.1]}}\nbogus: 1\n", "unknown key 'bogus'"),
        ("params: {optim.lr: {choices: [0.1], low: 0.1}}\n", "not both"),
        ("params: {optim.lr: {low: 0.5, high: 0.1}}\n", "above high"),
        ("params: {optim.lr: {low: 0, high: 1, log: true}}\n", "low > 0"),
        ("params: {optimizer.lr: {choices: [0.1]}}\n", "must start with a run-config section"),
        ("params: {model.blokcs: {choices: [[1, 1]]}}\n", "not a model field"),
        ("params: {optim.name: {choices: [sgd, sgdd]}}\n", "params.optim.name: 'sgdd' does not fit"),
        ("params: {model: {choices: [[1, 1]]}}\n", "mapping of model fields"),
        ("params: {}\n", "params"),
        ("params: {optim.lr: {choices: [0.1, 0.1]}}\n", "duplicates"),
        ("base: nowhere.yaml\nparams: {optim.lr: {choices: [0.1]}}\n", "does not exist"),
        ("base: {config: x.yaml, recipe: [1]}\nparams: {optim.lr: {choices: [0.1]}}\n", "recipe and config"),
        ("fill_budget: width\nparams: {width_multiplier: {choices: [1.5]}}\n", "already sets the width"),
        ("params: {optim.lr: {choices: [0.1]}\n", "not valid YAML"),
        ("sampler: grid\nparams: {optim.lr: {low: 0.01, high: 0.1}}\n", "grid sampler needs choices"),
        ("enqueue: [{optim.momentum: 0.9}]\nparams: {optim.lr: {choices: [0.1]}}\n", "not one of the params"),
        ("enqueue: [{optim.lr: 0.2}]\nparams: {optim.lr: {choices: [0.1]}}\n", "not one of its choices"),
        ("enqueue: [{optim.lr: 2.0}]\nparams: {optim.lr: {low: 0.01, high: 1.0}}\n", "outside its range"),
    ],
)
def test_bad_space_file_is_one_line_exit_2(tmp_path, search_data, capsys, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    code, _, err = run_cli(capsys, "search", "--space", str(path), "--data", str(search_data), "--out", str(tmp_path / "s"),
                           "--trials", "1")
    assert code == 2
    assert err.startswith("budgetnet: error:") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "s" / "trials").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--sampler", "cmaes"], "unknown sampler"), (["--pruner", "median"], "unknown pruner"),
     (["--val-size", "0"], "--val-size must be above 0"), (["--budget", "lots"], "not a parameter count")],
)
def test_bad_flags_are_one_line_exit_2(tmp_path, search_data, capsys, flags: list[str], message: str) -> None:
    space = write_space(tmp_path / "ok.yaml", params={"optim.lr": {"choices": [0.1]}})
    code, _, err = run_cli(capsys, "search", "--space", str(space), "--data", str(search_data), "--trials", "1",
                           "--out", str(tmp_path / "s"), *flags)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_enqueued_baseline_runs_first_and_only_once(tmp_path, search_data) -> None:
    """A space's `enqueue` entries are a new study's first trials (a labelled choice by label);
    continuing the study does not queue them again."""
    space = SearchSpace.model_validate({
        "base": TINY, "budget": "20k", "sampler": "random", "seed": 1,
        "params": {"model": {"merge": True, "choices": SHAPES}, "optim.lr": {"low": 0.01, "high": 0.3, "log": True}},
        "enqueue": [{"model": "wide", "optim.lr": 0.123}],
    })
    kwargs = dict(out=tmp_path / "s", pruner="none", data_overrides={"path": str(search_data)}, study_name="q")
    run_search(space, trials=1, **kwargs)
    run_search(space, trials=3, **kwargs)
    trials = study_trials(tmp_path / "s", "q")
    assert trials[0].params == {"model": "wide", "optim.lr": 0.123} and trials[0].user_attrs["enqueued"]
    assert len(trials) == 3 and not any(t.user_attrs.get("enqueued") for t in trials[1:])


def test_a_study_keeps_its_budget(tmp_path, search_data, capsys) -> None:
    space = write_space(tmp_path / "b.yaml", params={"optim.lr": {"choices": [0.1]}}, epochs=1)
    args = ["search", "--space", str(space), "--data", str(search_data), "--out", str(tmp_path / "s"), "--trials", "1"]
    assert run_cli(capsys, *args)[0] == 0
    code, _, err = run_cli(capsys, *args, "--budget", "30k")
    assert code == 2 and "budget of 20,000, not 30,000" in err
    for more, says in ((["--max-flops", "50M"], "flops = None, not 50000000"),
                       (["--max-latency-ms", "5"], "latency_ms = None, not 5.0")):
        code, _, err = run_cli(capsys, *args, "--trials", "2", *more)
        assert code == 2 and says in err and err.count("\n") <= 1, err


def test_choices_encode_replace_merge_and_dotted_keys() -> None:
    space = SearchSpace.model_validate({"base": TINY, "params": {
        "augment": {"choices": [{}, {"crop": {"padding": 2}}]},
        "augment.flip.mode": {"choices": ["alternate"]},  # creates augment.flip, after augment is set
        "optim": {"merge": True, "choices": {"nesterov": {"nesterov": True}}},
        "train.batch_size": {"low": 32, "high": 96, "step": 32},
    }})
    assert space.params["augment"].labels == ["{}", '{"crop":{"padding":2}}']
    assert space.params["train.batch_size"].is_int and space.grid()["train.batch_size"] == [32, 64, 96]
    values = {"augment": {"crop": {"padding": 2}}, "augment.flip.mode": "alternate", "optim": {"nesterov": True},
              "train.batch_size": 64}
    cfg = space.resolve(values, space.base_mapping())
    assert cfg.augment.crop.padding == 2 and cfg.augment.flip.mode == "alternate"
    assert cfg.optim.nesterov and cfg.optim.lr == 0.1  # merged: the base's lr stays
    assert cfg.train.batch_size == 64


def test_width_multiplier_and_fill_budget() -> None:
    scaled = SearchSpace.model_validate({"base": TINY, "params": {"width_multiplier": {"choices": [2.0]}}})
    assert scaled.resolve({"width_multiplier": 2.0}, scaled.base_mapping()).model.channels == [16, 32]

    filled = SearchSpace.model_validate({"base": TINY, "budget": "50k", "fill_budget": "width",
                                         "params": {"model.blocks": {"choices": [[1, 1], [2, 2]]}}})
    for blocks in ([1, 1], [2, 2]):
        spec = filled.resolve({"model.blocks": blocks}, filled.base_mapping()).model
        assert spec.blocks == blocks and spec.channels[1] == 2 * spec.channels[0]  # the ratio is kept
        assert 45_000 < count_params(spec) <= 50_000
    deep = SearchSpace.model_validate({"base": TINY, "budget": "50k", "fill_budget": {"mode": "depth"},
                                       "params": {"model.channels": {"choices": [[16, 32]]}}})
    spec = deep.resolve({"model.channels": [16, 32]}, deep.base_mapping()).model
    assert spec.channels == [16, 32] and sum(spec.blocks) > 2 and count_params(spec) <= 50_000
    # A shape whose narrowest form is over the budget comes back unfitted, for the caller to reject.
    tight = filled.model_copy(update={"budget": 100})
    assert count_params(tight.resolve({"model.blocks": [2, 2]}, tight.base_mapping()).model) > 100


def test_param_spec_suggests_decoded_values() -> None:
    spec = ParamSpec(choices={"a": [1, 2], "b": {"x": 1}})
    trial = optuna.trial.FixedTrial({"p": "b", "r": 3})
    assert spec.suggest(trial, "p") == {"x": 1}
    assert ParamSpec(low=1, high=5).suggest(trial, "r") == 3


# ---- the shipped space files ---------------------------------------------------------------


def _candidates(space: SearchSpace, n: int) -> list[dict[str, Any]]:
    """Parameter values the space's sampler would try (the whole grid for grid spaces)."""
    found: list[dict[str, Any]] = []

    def record(trial: optuna.Trial) -> float:
        found.append({name: spec.suggest(trial, name) for name, spec in space.params.items()})
        return 0.0

    sampler = optuna.samplers.GridSampler(space.grid(), seed=0) if space.sampler == "grid" else optuna.samplers.RandomSampler(0)
    optuna.create_study(sampler=sampler).optimize(record, n_trials=n)
    return found


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_spaces_resolve(path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(path)
    base = space.base_mapping({"data": {"path": "cifar.npz"}})
    candidates = _candidates(space, 200 if space.sampler == "grid" else 6)
    for values in candidates:
        cfg = space.resolve(values, base)  # every combination is a valid run config
        assert cfg.budget == 5_000_000
    if path.stem == "seed000_blocks":
        counts = {label: count_params(space.resolve({"model": value}, base).model)
                  for label, value in space.params["model"].choices.items()}
        assert {k for k, v in counts.items() if v > 5_000_000} == {"2-2-1-1", "2-2-2-1", "2-2-3-1", "2-2-2-2"}
        assert counts["5-4-3"] == 4_771_146 and counts["4-5-3"] == 4_992_586 and counts["1-1-1"] == 1_227_594
    if path.stem == "seed003_grid":
        assert len(candidates) == 126 and len({json.dumps(c, sort_keys=True) for c in candidates}) == 126


def test_load_space_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(BudgetnetError, match="space file .* does not exist"):
        load_space(tmp_path / "missing.yaml")


def test_a_search_kept_in_sqlite_continues_there(tmp_path, search_data) -> None:
    """A search directory whose study is in study.db (as searches kept it before the journal)
    goes on in it."""
    space = SearchSpace.model_validate({"base": TINY, "budget": "20k", "params": {"optim.lr": {"low": 0.05, "high": 0.2}}})
    out = tmp_path / "s"
    kwargs = dict(out=out, pruner="none", data_overrides={"path": str(search_data)})
    run_search(space, trials=1, storage=f"sqlite:///{out / 'study.db'}", **kwargs)
    result = run_search(space, trials=2, **kwargs)
    assert result.storage == f"sqlite:///{out / 'study.db'}" and result.counts["complete"] == 2
    assert not (out / "study.journal").exists()
