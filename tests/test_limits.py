"""Limits beside the parameter budget (forward FLOPs, stored bytes, latency): parsing, fitting
a shape under all of them, the latency cache, the reports of summary/zoo/fit, the run config,
training that refuses a model over one, and a search that rejects such candidates untrained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from conftest import make_synthetic

import budgetnet.models.budget as budget_mod
import budgetnet.models.limits as limits_mod
import budgetnet.search as search_mod
from budgetnet.cli import main
from budgetnet.config import load_config
from budgetnet.errors import BudgetnetError
from budgetnet.models import ResNetSpec, fit_to_budget, summarize
from budgetnet.models.budget import check_limits, over_limits
from budgetnet.models.limits import Limits, measure_latency, parse_bytes, parse_flops
from budgetnet.search import SearchSpace, run_search
from budgetnet.search_workers import StudyStore
from budgetnet.train.engine import RunResult

BIG = 10**9  # a parameter budget that never binds, so the other limit does


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def fake_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency as a pure function of FLOPs (1 ms per MFLOP), so fits are exact and instant."""
    monkeypatch.setattr(budget_mod, "measure_latency", lambda spec, batch=1: summarize(spec).flops / 1e6)


@pytest.mark.parametrize(("text", "value"), [("300M", 300_000_000), ("1.5G", 1_500_000_000), ("3e8", 300_000_000),
                                             ("250k", 250_000), (1_000, 1_000), ("2T", 2 * 10**12)])
def test_parse_flops(text: str | int, value: int) -> None:
    assert parse_flops(text) == value


@pytest.mark.parametrize(("text", "value"), [("2MB", 2_000_000), ("2 MB", 2_000_000), ("2M", 2_000_000),
                                             ("500kB", 500_000), ("1.5MiB", 1_572_864), ("1GiB", 2**30),
                                             ("4096", 4096), ("100b", 100)])
def test_parse_bytes(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize(("parse", "text", "needle"), [
    (parse_flops, "lots", "not a FLOP count"), (parse_flops, "-3M", "must be positive"),
    (parse_flops, "1e30", "absurdly large"), (parse_bytes, "2XB", "not a size in bytes"),
    (parse_bytes, "0.5b", "whole number of bytes"), (parse_bytes, True, "not a size in bytes"),
])
def test_limit_parsing_errors(parse: Any, text: Any, needle: str) -> None:
    with pytest.raises(BudgetnetError, match=needle):
        parse(text)


def _wider(spec: ResNetSpec) -> ResNetSpec:
    """The next base width of a 1,2,4 width fit."""
    base = spec.channels[0] + 1
    return spec.model_copy(update={"channels": [base, 2 * base, 4 * base]})


@pytest.mark.parametrize(("limits", "measure"), [
    (Limits(params=BIG, flops=50_000_000), lambda s: summarize(s).flops),
    (Limits(params=BIG, bytes=400_000), lambda s: summarize(s).bytes["fp32"]),
    (Limits(params=BIG, bytes=400_000, int8_bytes=True), lambda s: summarize(s).bytes["int8"]),
    (Limits(params=BIG, latency_ms=30.0), lambda s: summarize(s).flops / 1e6),
], ids=["flops", "fp32-bytes", "int8-bytes", "latency"])
def test_width_fit_is_the_widest_under_the_limit(limits: Limits, measure: Any, fake_latency: None) -> None:
    spec = fit_to_budget(limits, blocks=[1, 1, 1], width_ratios=[1, 2, 4])
    cap = limits.flops or limits.bytes or limits.latency_ms
    assert measure(spec) <= cap < measure(_wider(spec))
    assert over_limits(spec, limits) is None and over_limits(_wider(spec), limits) is not None


def test_int8_bytes_fit_a_wider_network_than_fp32() -> None:
    fp32 = fit_to_budget(Limits(params=BIG, bytes=400_000), blocks=[1, 1, 1], width_ratios=[1, 2, 4])
    int8 = fit_to_budget(Limits(params=BIG, bytes=400_000, int8_bytes=True), blocks=[1, 1, 1], width_ratios=[1, 2, 4])
    assert int8.channels[0] > 1.8 * fp32.channels[0]  # a quarter of the bytes per weight


def test_every_limit_binds_the_fit_together(fake_latency: None) -> None:
    # Each limit alone allows a different width; together the tightest one wins.
    alone = {name: fit_to_budget(Limits(params=BIG, **{name: value}), blocks=[1, 1], width_ratios=[1, 2]).channels[0]
             for name, value in (("flops", 30_000_000), ("bytes", 300_000), ("latency_ms", 20.0))}
    assert len(set(alone.values())) == 3
    together = fit_to_budget(Limits(params=BIG, flops=30_000_000, bytes=300_000, latency_ms=20.0),
                             blocks=[1, 1], width_ratios=[1, 2])
    assert together.channels[0] == min(alone.values())


def test_depth_fit_under_flops_grows_until_no_layer_can_take_a_block() -> None:
    limits = Limits(params=BIG, flops=40_000_000)
    spec = fit_to_budget(limits, mode="depth", channels=[16, 32, 64])
    assert sum(spec.blocks) > 3 and summarize(spec).flops <= limits.flops
    for i in range(3):
        grown = list(spec.blocks)
        grown[i] += 1
        assert summarize(spec.model_copy(update={"blocks": grown})).flops > limits.flops


def test_depth_fit_under_latency_measures_candidates(fake_latency: None) -> None:
    spec = fit_to_budget(Limits(params=BIG, latency_ms=40.0), mode="depth", channels=[16, 32, 64])
    assert spec == fit_to_budget(Limits(params=BIG, flops=40_000_000), mode="depth", channels=[16, 32, 64])


def test_a_shape_that_cannot_fit_names_the_limit() -> None:
    with pytest.raises(BudgetnetError, match=r"even the narrowest .* needs [\d,]+ FLOPs per 32x32 image, over the "
                                             r"limit of 1,000 \(--max-flops\)"):
        fit_to_budget(Limits(params=BIG, flops=1000), blocks=[4, 5, 3], width_ratios=[1, 2, 4])
    with pytest.raises(BudgetnetError, match=r"even the shallowest .* stores [\d,]+ bytes of int8 weights, over the "
                                             r"limit of 100 \(--max-bytes\)"):
        fit_to_budget(Limits(params=BIG, bytes=100, int8_bytes=True), mode="depth", channels=[64, 128])


def test_checks_report_every_limit_and_over_limits_the_first_broken() -> None:
    spec = ResNetSpec(blocks=[1], channels=[8])
    checks = check_limits(spec, Limits(params=1000, flops=10**9, bytes=100))
    assert [(c.name, c.fits) for c in checks] == [("params", False), ("bytes", False), ("flops", True)]
    assert over_limits(spec, Limits(params=10**6, bytes=100)).startswith("stores 6,240 bytes of fp32 weights")
    assert over_limits(spec, Limits(params=10**6)) is None


def test_latency_is_measured_once_per_machine_and_shape(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_mod, "_MEASURED", {})
    monkeypatch.setattr(limits_mod, "_busy", lambda: False)
    spec = ResNetSpec(blocks=[1], channels=[8], input_size=16)
    first = measure_latency(spec)
    assert first > 0 and len(list((isolated_cache / "latency").iterdir())) == 1
    monkeypatch.setattr(limits_mod, "_MEASURED", {})  # a new process: only the cache remembers

    def no_build(spec: ResNetSpec) -> None:
        raise AssertionError("a cached latency was measured again")

    monkeypatch.setattr(limits_mod, "build_model", no_build)
    assert measure_latency(spec) == first
    with pytest.raises(AssertionError, match="measured again"):
        measure_latency(spec, batch=4)  # another shape of the run: measured anew
    monkeypatch.setattr(limits_mod.torch, "get_num_threads", lambda: 999)
    with pytest.raises(AssertionError, match="measured again"):
        measure_latency(spec)  # another thread count is another machine


def test_a_busy_cpu_times_are_not_cached(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(limits_mod, "_MEASURED", {})
    monkeypatch.setattr(limits_mod, "_busy", lambda: True)
    limits_mod._warn_busy.cache_clear()
    spec = ResNetSpec(blocks=[1], channels=[8], input_size=16)
    assert measure_latency(spec) == measure_latency(spec) > 0  # kept for this process
    measure_latency(spec, batch=2)
    assert not (isolated_cache / "latency").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the CPU is busy" in err and "not cached" in err  # warned once


def test_summary_and_zoo_report_every_limit(capsys: pytest.CaptureFixture[str], fake_latency: None) -> None:
    code, out, err = run(capsys, "summary", "--preset", "speedrun_2m", "--max-flops", "200M", "--max-bytes", "2.5MB",
                         "--int8-bytes", "--max-latency-ms", "300", "--latency-batch", "4", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert {c["limit"]: c["fits"] for c in data["limits"]} == {"params": True, "bytes": True, "flops": False,
                                                              "latency_ms": True}
    assert data["within_limits"] is False and data["latency_batch"] == 4 and data["latency_ms"] == data["flops"] / 1e6
    code, out, _ = run(capsys, "summary", "--preset", "speedrun_2m", "--max-flops", "200M")
    assert code == 0 and "FLOPs limit 200,000,000: OVER by 36,294,720" in out

    code, out, _ = run(capsys, "zoo", "--max-flops", "300M", "--json")
    presets = {p["name"]: p for p in json.loads(out)["presets"]}
    assert presets["speedrun_2m"]["within_limits"] and not presets["speedrun_5m"]["within_limits"]
    assert presets["speedrun_5m"]["over"] == ["needs 603,121,728 FLOPs per 32x32 image, over the limit of "
                                              "300,000,000 (--max-flops)"]
    code, out, _ = run(capsys, "zoo", "--max-latency-ms", "250")
    assert code == 0 and "ms/img" in out and "budget 5,000,000, 250 ms at batch 1" in " ".join(out.split())


def test_summary_counts_the_speedrun_family_at_64_pixels(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "--preset", "speedrun_2m", "--input-size", "64", "--json")
    data = json.loads(out)
    at_32 = summarize(ResNetSpec.model_validate(data["spec"]).model_copy(update={"input_size": 32, "strides": None}))
    # The first stage pools 4x instead of 2x: same parameters, same 3x3 final map, FLOPs grown
    # only in the stem and first conv (4x as many pixels there), not 4x overall.
    assert code == 0 and data["spec"]["strides"] == [4, 2, 2] and data["params"] == at_32.params == 1_971_352
    assert data["layers"][-2]["output_shape"] == [256, 3, 3]
    assert at_32.flops < data["flops"] == 321_192_512 < 2 * at_32.flops


def test_fit_cli_under_params_flops_and_latency(capsys: pytest.CaptureFixture[str], fake_latency: None,
                                                tmp_path: Path) -> None:
    argv = ["fit", "--preset", "speedrun_2m", "--budget", "1M", "--max-flops", "100M", "--max-latency-ms", "90"]
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [c["limit"] for c in data["limits"]] == ["params", "flops", "latency_ms"]
    assert all(c["fits"] for c in data["limits"]) and data["limits"][2]["value"] <= 90
    code, out, _ = run(capsys, *argv)
    assert "# widest network within budget 1,000,000, 100,000,000 FLOPs, 90 ms at batch 1:" in out
    assert "# Latency limit 90 ms (" in out and "yaml" not in out
    # The same limits from a run config's keys.
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"preset": "speedrun_2m"}, "budget": "1M", "max_flops": "100M",
                                      "max_latency_ms": 90}))
    code, out, _ = run(capsys, "fit", "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["spec"] == data["spec"]


def test_run_config_keys_and_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(overrides={"max_flops": "300M", "max_bytes": "2MB", "int8_bytes": True, "max_latency_ms": 2,
                                 "latency_batch": 8})
    assert cfg.limits == Limits(params=5_000_000, flops=300_000_000, bytes=2_000_000, int8_bytes=True,
                                latency_ms=2.0, latency_batch=8)
    with pytest.raises(BudgetnetError, match=r"max_flops: FLOPs limit 'fast' is not a FLOP count"):
        load_config(overrides={"max_flops": "fast"})
    for flag, value, needle in (("--max-bytes", "2XB", "not a size in bytes"),
                                ("--max-latency-ms", "-1", "max_latency_ms: Input should be greater than 0")):
        code, _, err = run(capsys, "summary", "--preset", "flagship", flag, value)
        assert code == 2 and err.count("\n") == 1 and needle in err


def test_train_refuses_a_model_over_a_limit_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.npz"
    synthetic = make_synthetic({"train": 10}, size=16)
    np.savez(data, x=synthetic.x["train"], y=synthetic.y["train"], classes=np.array(synthetic.classes))
    code, _, err = run(capsys, "train", "--data", str(data), "--preset", "flagship", "--max-flops", "10M",
                       "--out", str(tmp_path / "run"), "--device", "cpu")
    assert code == 2 and err.count("\n") == 1
    # At 16x16 the flagship pools 1x in its first stage, so its FLOPs are those of 16x16 inputs.
    assert f"needs {summarize(load_config(overrides={'model': {'preset': 'flagship', 'input_size': 16, 'classes': 3}}).model).flops:,} FLOPs per 16x16 image" in err
    assert "(--max-flops); shrink it (budgetnet fit) or pass --allow-over-budget" in err
    assert not (tmp_path / "run" / "config.yaml").exists()


# ---- search: candidates over a limit are rejected untrained --------------------------------

TINY = {
    "model": {"blocks": [1, 1], "channels": [8, 16]},
    "data": {"val_size": 30},
    "train": {"epochs": 1, "batch_size": 30, "device": "cpu", "threads": 1, "precision": "fp32", "tta": False},
    "optim": {"lr": 0.1},
}
# At 16x16: [8, 16] is 5,147 parameters, 1.16 MFLOPs, 21,212 fp32 bytes; [64, 128] is 306,371
# parameters, 68.0 MFLOPs, 1,230,140 bytes: under the 1M budget, over each limit below.
SHAPES = {"small": {"channels": [8, 16]}, "huge": {"channels": [64, 128]}}


@pytest.mark.parametrize(("limit", "flag"), [({"max_flops": "10M"}, "--max-flops"),
                                             ({"max_bytes": "100kB"}, "--max-bytes"),
                                             ({"max_latency_ms": 10}, "--max-latency-ms")])
def test_search_rejects_candidates_over_any_limit_untrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            fake_latency: None, limit: dict, flag: str) -> None:
    data = tmp_path / "d.npz"
    synthetic = make_synthetic({"train": 40}, size=16)
    np.savez(data, x=synthetic.x["train"], y=synthetic.y["train"], classes=np.array(synthetic.classes))
    trained: list[Any] = []

    def fake_train(cfg: Any, out: Path, **kwargs: Any) -> RunResult:
        trained.append(cfg)
        return RunResult(Path(out), {"best_val_acc": 0.5, "epochs_run": 1, "train_seconds": 0.1})

    monkeypatch.setattr(search_mod, "train", fake_train)
    space = SearchSpace.model_validate({"base": TINY, "budget": "1M", **limit, "sampler": "grid",
                                        "params": {"model": {"choices": SHAPES, "merge": True}}})
    result = run_search(space, out=tmp_path / "s", data_overrides={"path": str(data)})
    states = {row["values"]["model"]: row for row in result.rows}
    assert states["small"]["state"] == "complete" and states["huge"]["state"] == "over budget", [r["note"] for r in result.rows]
    assert flag in states["huge"]["note"] and states["huge"]["note"].startswith("over budget: the candidate ")
    assert [cfg.model.channels for cfg in trained] == [[8, 16]]  # the huge one never reached training
    # Candidates take their classes and input size from the data (3 classes of 16x16 images).
    assert trained[0].model.classes == 3 and trained[0].model.input_size == trained[0].data.input_size == 16
    study = optuna.load_study(study_name="search", storage=StudyStore(tmp_path / "s").storage())
    assert {t.user_attrs.get("over_budget") for t in study.trials} == {None, True}
