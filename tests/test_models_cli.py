"""`budgetnet summary | zoo | fit`, run in-process through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import budgetnet.models
from budgetnet.cli import main
from budgetnet.models import PRESETS, list_presets


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_json_done_when(capsys) -> None:
    code, out, err = run(capsys, "summary", "--blocks", "4,5,3", "--channels", "64,128,256", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["params"] == 4_992_586
    assert data["budget"] == 5_000_000 and data["within_budget"] is True
    assert data["flops"] > 0 and data["layers"][0]["name"] == "stem.conv"


def test_summary_table(capsys) -> None:
    code, out, _ = run(capsys, "summary", "--preset", "seed001_resnet")
    assert code == 0
    assert "Trainable parameters: 4,662,346" in out
    assert "FLOPs per image (32x32)" in out and "Weights as stored: fp32 17.80 MiB (18,669,496 bytes) | int8" in out
    assert "fits, 337,654 to spare" in out


@pytest.mark.parametrize("budget", ["5M", "4.5e6", "5000000"])
def test_summary_budget_forms(capsys, budget: str) -> None:
    code, out, _ = run(capsys, "summary", "--preset", "resnet18", "--budget", budget, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["budget"] == int(float(budget.replace("M", "e6")))
    assert data["within_budget"] is False


def test_flags_override_preset(capsys) -> None:
    code, out, _ = run(capsys, "summary", "--preset", "resnet26_b453", "--channels", "64,128,192", "--json")
    assert code == 0 and json.loads(out)["params"] == 3_618_890


def test_every_model_flag(capsys) -> None:
    argv = [
        "summary", "--blocks", "1,0", "--channels", "8,16", "--strides", "1,2", "--stage-kinds", "residual,conv_pool",
        "--block-kernels", "5,3", "--skip-kernel", "3", "--stem-width", "4", "--stem-kernel", "5", "--pool", "2",
        "--block", "preact", "--activation", "silu", "--classes", "7", "--dropout", "0.1", "--input-size", "16",
        "--head-scale", "0.5", "--json",
    ]  # fmt: skip
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    spec = json.loads(out)["spec"]
    assert spec["stage_kinds"] == ["residual", "conv_pool"] and spec["pool"] == 2 and spec["classes"] == 7
    assert spec["stem_width"] == 4 and spec["head_scale"] == 0.5 and spec["activation"] == "silu"


@pytest.mark.parametrize("wrap", [False, True], ids=["bare-spec", "run-config"])
def test_config_file(capsys, tmp_path: Path, wrap: bool) -> None:
    section = {"preset": "resnet26_b453", "dropout": 0.1}
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump({"model": section, "epochs": 3} if wrap else section))
    code, out, _ = run(capsys, "summary", "--config", str(path), "--json")
    assert code == 0 and json.loads(out)["params"] == 4_992_586
    code, out, _ = run(capsys, "summary", "--config", str(path), "--channels", "64,128,192", "--json")
    assert code == 0 and json.loads(out)["params"] == 3_618_890


def test_zoo_json(capsys) -> None:
    code, out, _ = run(capsys, "zoo", "--json", "--budget", "5M")
    assert code == 0
    presets = {p["name"]: p for p in json.loads(out)["presets"]}
    assert set(presets) == {p.name for p in list_presets()}
    assert presets["seed000_1111"]["claimed_diff"] == 2_560
    assert presets["seed002_resnet26_b453"]["aliases"] == ["resnet26_b453"]
    assert presets["resnet18"]["within_budget"] is False
    assert presets["seed002_resnet26_b453"]["claimed_accuracy"] == 95.95


def test_zoo_table(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # A few presets are enough for the table; summarizing all of them twice is slow on CPU.
    few = [PRESETS["seed000_1111"], PRESETS["seed002_resnet26_b453"]]
    monkeypatch.setattr(budgetnet.models, "list_presets", lambda: few)  # the zoo command looks it up when run
    code, out, _ = run(capsys, "zoo")
    assert code == 0 and "seed002_resnet26_b453" in out and "resnet26_b453" in out
    assert "+2,560" in out and "claimed 4,900,682" in out


def test_fit_saves_a_loadable_spec(capsys, tmp_path: Path) -> None:
    out_file = tmp_path / "fit" / "spec.yaml"
    argv = ["fit", "--blocks", "4,5,3", "--width-ratios", "1,2,4", "--budget", "2M", "--multiple", "8"]
    code, out, err = run(capsys, *argv, "--out", str(out_file), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["params"] <= 2_000_000 and all(c % 8 == 0 for c in data["spec"]["channels"])
    code, out, _ = run(capsys, "summary", "--config", str(out_file), "--json")
    assert code == 0 and json.loads(out)["params"] == data["params"]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and yaml.safe_load(out)["channels"] == data["spec"]["channels"]


def test_fit_depth_and_from_config(capsys) -> None:
    code, out, _ = run(capsys, "fit", "--mode", "depth", "--channels", "64,128,256", "--json")
    assert code == 0 and json.loads(out)["spec"]["blocks"] == [8, 4, 3]
    code, out, _ = run(capsys, "fit", "--preset", "seed001_resnet", "--budget", "3M", "--json")
    data = json.loads(out)
    assert code == 0 and data["params"] <= 3_000_000 and data["spec"]["block_kernels"] == [5, 3]


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["summary", "--blocks", "4,5,3", "--channels", "64,0,256"], "channels[1]"),
        (["summary", "--blocks", "4,5,3", "--channels", "64,-8,256"], "channels[1]"),
        (["summary", "--blocks", "4,5,3", "--channels", "64,128"], "channels has 2 entries but blocks has 3"),
        (["summary", "--blocks", "1", "--channels", "8", "--block-kernels", "4,3"], "kernel 4 is even"),
        (["summary", "--preset", "nope"], "unknown preset 'nope'"),
        (["summary", "--preset", "resnet18", "--budget", "lots"], "budget 'lots'"),
        (["summary", "--blocks", "4,x,3", "--channels", "8,8,8"], "--blocks"),
        (["summary", "--blocks", "1", "--channels", "8", "--pool", "big"], "--pool"),
        (["summary"], "choose a model"),
        (["summary", "--preset", "resnet18", "--bogus"], "No such option"),
        (["summary", "--config", "/nonexistent/model.yaml"], "does not exist"),
        (["fit", "--blocks", "4,5,3", "--width-ratios", "1,2,4", "--budget", "1000"], "even the narrowest"),
        (["fit", "--blocks", "4,5,3", "--width-ratios", "1,two", "--budget", "1M"], "--width-ratios"),
        (["fit", "--mode", "sideways", "--blocks", "1"], "--mode"),
        (["zoo", "--budget", "-1"], "must be positive"),
    ],
)
def test_user_errors_are_one_line(capsys, argv: list[str], needle: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("budgetnet: error:")
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("blocks: [1]\nchannels: [8]\nwidht: 3\n", "unknown key 'model.widht'"),
        ("model:\n  preset: resnet18\n  drop_out: 0.1\n", "unknown key 'model.drop_out'"),
        ("blocks: [1\n", "not valid YAML at line"),
        ("- 1\n- 2\n", "must hold a model spec mapping"),
    ],
)
def test_bad_yaml_is_one_line(capsys, tmp_path: Path, content: str, needle: str) -> None:
    code, _, err = run(capsys, "summary", "--config", _write(tmp_path, "m.yaml", content))
    assert code == 2 and err.count("\n") == 1 and needle in err
