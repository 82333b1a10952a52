"""`budgetnet ensemble`, its manifest, `budgetnet evaluate` on a manifest and `load_ensemble`:
the ensemble's accuracy and loss against a hand computation from the members' averaged softmax,
weights from validation accuracy, the summed parameter cost, and mismatched members refused
with one line.

Two tiny members (1,443 parameters, 3 epochs on 240 noisy 16x16 images) are trained once for
the module; the mismatch test trains three more for one epoch each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run_config, write_noisy_npz

from budgetnet.cli import main
from budgetnet.config import RunConfig
from budgetnet.data import prepare_data
from budgetnet.ensemble import load_ensemble
from budgetnet.models import build_model, count_params
from budgetnet.train.checkpoint import load_checkpoint
from budgetnet.train.engine import train

BUDGET = 2000  # each member (1,443 parameters) fits; the two together do not


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ensemble")
    write_noisy_npz(root / "data.npz", 240, seed=0)
    # The npz's test split: the same kind of images, another draw.
    with np.load(write_noisy_npz(root / "other.npz", 90, seed=1)) as other, np.load(root / "data.npz") as d:
        np.savez(root / "data.npz", x=d["x"], y=d["y"], classes=d["classes"], x_test=other["x"], y_test=other["y"])
    for seed in (0, 1):  # different lengths too, so that their validation accuracies differ
        train(member_config(root, seed=seed, epochs=3 - seed), root / f"m{seed}", quiet=True)
    return root


def member_config(root: Path, *, seed: int = 0, epochs: int = 3, data: dict | None = None,
                  model: dict | None = None) -> RunConfig:
    return tiny_run_config(root / "data.npz", budget=BUDGET, train={"epochs": epochs, "seed": seed},
                           data={"cache_dir": str(root / "cache"), **(data or {})}, model=model or {})


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.startswith("budgetnet: error: ") and err.count("\n") == 1, err
    return err


def hand_probs(run_dir: Path, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Softmax of a member's best.pt on uint8 NCHW images, computed here from scratch, and the
    validation accuracy it recorded."""
    state = load_checkpoint(run_dir / "best.pt")
    model = build_model(RunConfig.model_validate(state.config).model)
    model.load_state_dict(state.model)
    mean = torch.tensor(state.mean).view(1, 3, 1, 1)
    std = torch.tensor(state.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.softmax(model.eval()((x.float() / 255 - mean) / std), 1), state.val_acc


def split_of(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = prepare_data(member_config(root).data, "cpu", splits=(split,))
    return getattr(data, split)


def check_against_hand(report: dict, root: Path, split: str, weights: list[float] | None = None) -> None:
    x, y = split_of(root, split)
    probs = [hand_probs(root / f"m{s}", x)[0] for s in (0, 1)]
    if weights is None:
        weights = [0.5, 0.5]
    mixed = sum(w * p for w, p in zip(weights, probs))
    accuracy = float((mixed.argmax(1) == y).double().mean())
    loss = float(-mixed[torch.arange(len(y)), y].log().mean())
    assert report["images"] == len(y)
    assert report["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert report["loss"] == pytest.approx(loss, rel=1e-5)
    for member, p, w in zip(report["members"], probs, weights):
        assert member["accuracy"] == pytest.approx(float((p.argmax(1) == y).double().mean()), abs=1e-9)
        assert member["weight"] == pytest.approx(w)
    # The test can tell averaging from its mistakes: one member alone, or averaged logits.
    assert all(abs(loss - float(-p[torch.arange(len(y)), y].log().mean())) > 1e-3 for p in probs)
    logit_mix = torch.softmax(sum(w * p.log() for w, p in zip(weights, probs)), 1)
    assert abs(loss - float(-logit_mix[torch.arange(len(y)), y].log().mean())) > 1e-4


def test_ensemble_is_the_averaged_softmax(root: Path, tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "ens" / "ensemble.json"
    code, out, err = run(capsys, "ensemble", str(root / "m0"), str(root / "m1"), "--data", str(root / "data.npz"),
                         "--device", "cpu", "--json", "--out", str(manifest))
    assert code == 0, err
    report = json.loads(out)
    check_against_hand(report, root, "val")
    assert [m["run"] for m in report["members"]] == [str(root / "m0"), str(root / "m1")]

    # The cost counts every member against the budget.
    params = count_params(member_config(root).model)
    assert report["params"] == 2 * params and report["budget"] == BUDGET and report["within_budget"] is False
    code, text, err = run(capsys, "ensemble", str(root / "m0"), str(root / "m1"), "--data", str(root / "data.npz"),
                          "--device", "cpu")
    assert code == 0, err
    assert f"{2 * params:,} params (all members)" in text and "OVER the budget" in text

    # The manifest: documented fields, members relative to it, and evaluate reads it.
    saved = json.loads(manifest.read_text())
    assert saved["format"] == "budgetnet-ensemble" and saved["version"] == 1 and saved["classes"] == ["a", "b", "c"]
    for i, member in enumerate(saved["members"]):
        assert not Path(member["checkpoint"]).is_absolute()
        assert (manifest.parent / member["checkpoint"]).resolve() == (root / f"m{i}" / "best.pt").resolve()
        assert member["params"] == params and member["weight"] == 0.5
    assert saved["evaluation"]["accuracy"] == report["accuracy"]
    code, out, err = run(capsys, "evaluate", str(manifest), "--data", str(root / "data.npz"), "--device", "cpu", "--json")
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["accuracy"] == report["accuracy"] and evaluated["loss"] == pytest.approx(report["loss"], rel=1e-6)
    assert (manifest.parent / "confusion-val.png").is_file()

    # load_ensemble: a module taking [0, 1] images, returning log mean softmax.
    module = load_ensemble(manifest)
    x, _ = split_of(root, "val")
    probs = [hand_probs(root / f"m{s}", x)[0] for s in (0, 1)]
    with torch.no_grad():
        torch.testing.assert_close(module(x.float() / 255).exp(), (probs[0] + probs[1]) / 2, rtol=1e-4, atol=1e-6)


def test_weighted_ensemble_on_the_test_split(root: Path, capsys) -> None:
    code, out, err = run(capsys, "ensemble", str(root / "m0"), str(root / "m1"), "--data", str(root / "data.npz"),
                         "--split", "test", "--weighted", "--device", "cpu", "--json")
    assert code == 0, err
    report = json.loads(out)
    val_accs = [load_checkpoint(root / f"m{s}" / "best.pt").val_acc for s in (0, 1)]
    assert val_accs[0] != val_accs[1]  # otherwise weighting changes nothing
    weights = [a / sum(val_accs) for a in val_accs]
    assert report["split"] == "test" and report["weighted"] is True
    check_against_hand(report, root, "test", weights)


def test_mismatched_members_are_one_line_errors(root: Path, tmp_path: Path, capsys) -> None:
    with np.load(root / "data.npz") as d:
        np.savez(tmp_path / "renamed.npz", x=d["x"], y=d["y"], classes=np.array(["a", "b", "z"]))
    renamed = member_config(root, epochs=1, data={"path": str(tmp_path / "renamed.npz")})
    train(renamed, tmp_path / "renamed", quiet=True)
    small = member_config(root, epochs=1, data={"input_size": 8, "resize": "stretch"}, model={"input_size": 8})
    train(small, tmp_path / "small", quiet=True)
    other_split = member_config(root, epochs=1, data={"split_seed": 1})
    train(other_split, tmp_path / "split1", quiet=True)
    m0, data = str(root / "m0"), str(root / "data.npz")
    capsys.readouterr()  # the trainings' epoch lines

    assert "classes" in fails(capsys, "ensemble", m0, str(tmp_path / "renamed"), "--data", data)
    assert "16x16" in fails(capsys, "ensemble", m0, str(tmp_path / "small"), "--data", data)
    err = fails(capsys, "ensemble", m0, str(tmp_path / "split1"), "--data", data)
    assert "split_seed" in err and "--split test" in err
    code, out, err = run(capsys, "ensemble", m0, str(tmp_path / "split1"), "--data", data, "--split", "test", "--json")
    assert code == 0 and json.loads(out)["images"] == 90, err
    assert "at least two" in fails(capsys, "ensemble", m0, "--data", data)
    assert "same checkpoint" in fails(capsys, "ensemble", m0, str(root / "m0" / "best.pt"), "--data", data)
    assert "no checkpoint" in fails(capsys, "ensemble", m0, str(tmp_path / "nothing"), "--data", data)
    assert ".json" in fails(capsys, "ensemble", m0, str(root / "m1"), "--data", data, "--out", str(tmp_path / "e.yaml"))
    assert not (tmp_path / "e.yaml").exists()

    # A manifest whose member changed since it was written is refused.
    manifest = tmp_path / "ensemble.json"
    code, _, err = run(capsys, "ensemble", m0, str(tmp_path / "split1"), "--data", data, "--split", "test",
                       "--out", str(manifest))
    assert code == 0, err
    assert run(capsys, "evaluate", str(manifest), "--data", data, "--split", "test")[0] == 0
    (tmp_path / "split1" / "best.pt").write_bytes((root / "m1" / "best.pt").read_bytes())
    assert "changed since" in fails(capsys, "evaluate", str(manifest), "--data", data, "--split", "test")
    manifest.write_text("{}")
    assert "not a budgetnet ensemble manifest" in fails(capsys, "evaluate", str(manifest), "--data", data)
