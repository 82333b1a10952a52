"""The ablation benchmark's rows are valid configs held to the baseline's compute, so a typo in a
row fails here rather than after hours of training on the machine that runs them."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import load_benchmark

from budgetnet.config import RunConfig, load_config
from budgetnet.train.checkpoint import Progress
from budgetnet.train.distributed import Ranks
from budgetnet.train.planner import Planner

ablations = load_benchmark("ablations")

DATA = "data.npz"  # configs only: nothing is read
RECORD = "the 2.095 s record's hyperparameters (batch 1,536, SiLU, colour jitter, 3 Newton-Schulz steps)"


def steps(cfg: RunConfig, train_images: int) -> int:
    """The steps the engine's planner gives the run (no time budget: its epochs' whole batches,
    or fewer where the compute budget pays for fewer)."""
    planner = Planner(cfg, train_images // cfg.train.batch_size, Progress(), Ranks(torch.device("cpu")))
    planner.plan(lambda: pytest.fail("no time budget: nothing to time"))
    return planner.progress.planned_steps


@pytest.mark.parametrize("name", sorted(ablations.PROTOCOLS))
def test_every_row_is_a_valid_config_at_the_baselines_compute(name: str) -> None:
    proto = ablations.PROTOCOLS[name]
    pflop = ablations.baseline_pflop(proto, proto.epochs, DATA)
    assert set(proto.rows) <= set(ablations.ROWS)
    base = ablations.row_config(proto, {}, 0, DATA, proto.epochs, pflop)
    for row in (None, *proto.rows):
        cfg = ablations.row_config(proto, ablations.ROWS.get(row, {}), 0, DATA, proto.epochs, pflop)
        assert cfg.train.pflop_budget == pflop and cfg.train.seed == 0
        assert cfg.data.val_size == 5_000 and cfg.data.split_seed == 0
        # A row equal to its baseline (say, after the default recipe adopts the row's change)
        # would measure seed noise under the row's name.
        assert row is None or cfg != base, row


def test_full_protocol_matches_the_default_runs_compute() -> None:
    proto = ablations.PROTOCOLS["full"]
    pflop = ablations.baseline_pflop(proto, proto.epochs, DATA)
    base = ablations.row_config(proto, {}, 0, DATA, proto.epochs, pflop)
    assert base.data.subset is None and base.train.time_budget_s is None and not base.optim.nesterov
    # 8 epochs of 22 steps of 2,000 (45,000 images, whole batches): the default run's 0.2495 PFLOP.
    assert steps(base, 45_000) == 176 == 8 * (45_000 // 2_000)
    half = ablations.row_config(proto, ablations.ROWS["batch 1,000 instead of 2,000"], 0, DATA, proto.epochs, pflop)
    assert steps(half, 45_000) == 352
    ema = ablations.row_config(proto, ablations.ROWS["EMA of the weights, decay 0.98 a step"], 0, DATA, 8, pflop)
    assert ema.train.ema_decay == 0.98
    record = ablations.row_config(proto, ablations.ROWS[RECORD], 0, DATA, 8, pflop)
    assert steps(record, 45_000) == 229 and record.optim.muon_ns_steps == 3  # batch 1,536 at the same compute
    # Width rows: as many steps as the baseline's compute pays for at their FLOPs an image.
    for row, expected in (("first block 32 wide (32/256/256), 1.33x the steps at the same PFLOP", 234),
                          ("widths 48/192/192, 1.71x the steps at the same PFLOP", 301),
                          ("widths 80/320/320, 0.66x the steps at the same PFLOP", 115)):
        assert steps(ablations.row_config(proto, ablations.ROWS[row], 0, DATA, proto.epochs, pflop), 45_000) == expected, row
    # Crop rows: the steps their smaller maps' compute pays for, not their epochs' (the cap binds).
    for row, expected in (("random 28 px crops throughout (whole 32 px images at validation), 1.32x the steps", 233),
                          ("random 24 px crops for the first 40%, 1.24x the steps", 217),
                          ("widths 48/192/256 and random 28 px crops throughout, 2.02x the steps", 355)):
        cfg = ablations.row_config(proto, ablations.ROWS[row], 0, DATA, proto.epochs, pflop)
        assert steps(cfg, 45_000) == expected < 22 * cfg.train.epochs, row


def test_proxy_keeps_its_measured_rows() -> None:
    proto = ablations.PROTOCOLS["proxy"]
    pflop = ablations.baseline_pflop(proto, 3, DATA)
    base = ablations.row_config(proto, {}, 1, DATA, 3, pflop)
    assert base.data.subset == 15_000 and base.optim.nesterov
    assert base.optim.lr == 0.053 and base.optim.head_lr_scale == 12.64  # as its rows were measured
    assert steps(base, 10_000) == 15
    progressive = ablations.ROWS["progressive resizing: 24 px for the first 40%, more steps at the same PFLOP"]
    cfg = ablations.row_config(proto, progressive, 1, DATA, 3, pflop)
    assert cfg.train.epochs == 4 and cfg.train.progressive[0].size == 24
    assert steps(cfg, 10_000) == 18  # the measured row's steps at the baseline's compute


def test_rows_picks_rows_by_name_and_refuses_a_name_no_row_has(tmp_path: Path, monkeypatch, capsys) -> None:
    argv = ["ablations.py", "--protocol", "full", "--data", DATA, "--out", str(tmp_path / "rows.jsonl"),
            "--table", str(tmp_path / "rows.md")]
    monkeypatch.setattr(sys, "argv", [*argv, "--rows", "no such row"])
    with pytest.raises(SystemExit) as exc:
        ablations.main()
    assert exc.value.code == 2 and "no row of the full protocol contains 'no such row'" in capsys.readouterr().err
    trained: list[str] = []

    def run_row(name: str, over: dict, seed: int, *rest: object) -> dict:
        trained.append(name)
        return {"row": name, "seed": seed, "val_acc_tta": 0.9, "train_pflop": 0.25, "precision": "bf16",
                "machine": "a CPU named by its rows", "run_dir": str(tmp_path)}

    monkeypatch.setattr(ablations, "run_row", run_row)
    monkeypatch.setattr(ablations, "evaluate_checkpoint", lambda *a, **k: (SimpleNamespace(accuracy=0.89), None))
    monkeypatch.setattr(sys, "argv", [*argv, "--rows", "Lookahead"])
    ablations.main()
    assert trained == [ablations.PROTOCOLS["full"].baseline, "Lookahead, 5 steps, alpha 0.5"]
    trained.clear()
    # Several --rows pick every row any of them names; rows already recorded are not run again.
    monkeypatch.setattr(sys, "argv", [*argv, "--rows", "Lookahead", "--rows", "cutout"])
    ablations.main()
    assert trained == ["cutout 12 px"]
    trained.clear()
    monkeypatch.setattr(sys, "argv", [*argv, "--rows", "cutout", "--rows", "no such row"])
    with pytest.raises(SystemExit) as exc:
        ablations.main()
    assert exc.value.code == 2 and "contains 'no such row'" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", [*argv, "--rows", "baseline", "--seeds", "1"])
    ablations.main()
    assert trained == [ablations.PROTOCOLS["full"].baseline]
    # The caption names the machine and precision the rows ran on, not the one that writes it.
    caption, command = (tmp_path / "rows.md").read_text().splitlines()[:2]
    assert caption.endswith("Machine: a CPU named by its rows; precision bf16.")
    assert f"--out {tmp_path / 'rows.jsonl'} --table {tmp_path / 'rows.md'}" in command


def test_the_anti_aliased_row_is_the_default_recipe() -> None:
    """The row measured as the default recipe trains what `budgetnet train` trains with no recipe
    named: the same config but for the benchmark's compute cap, and the same 400 steps; the rows
    before it, batch 1,000 with 2x2 max-pools, its 401 steps, and the default before batch
    1,000, its 198 steps of 2,000."""
    proto = ablations.PROTOCOLS["full"]
    pflop = ablations.baseline_pflop(proto, proto.epochs, DATA)
    crops = ablations.row_config(proto, ablations.ROWS["random 28 px crops for the first 50%, 9 epochs (1.125x the steps)"],
                                 0, DATA, proto.epochs, pflop)
    batch_1000 = ablations.row_config(
        proto, ablations.ROWS["the default's crops with batch 1,000 and Muon lr 0.17 (9 epochs)"], 0, DATA, proto.epochs, pflop)
    row = ablations.row_config(
        proto, ablations.ROWS["the default's crops with batch 1,000, Muon lr 0.17 and anti-aliased pooling (9 epochs)"],
        0, DATA, proto.epochs, pflop)
    default = load_config(overrides={"name": "ablation", "data": row.data.model_dump()})
    assert row.train.progressive[0].side(32) == default.train.progressive[0].side(32) == 28
    unpinned = {"progressive": default.train.progressive, "pflop_budget": default.train.pflop_budget,
                "shape_table": default.train.shape_table}
    assert row.model_copy(update={"train": row.train.model_copy(update=unpinned)}) == default
    assert steps(row, 45_000) == steps(default, 45_000) == 400
    assert not batch_1000.model.pool_blur and steps(batch_1000, 45_000) == 401
    assert (crops.train.batch_size, crops.optim.muon_lr, steps(crops, 45_000)) == (2000, 0.24, 198)
    # The rows on top of the crops at batch 2,000: batch 1,000 takes the steps the compute pays
    # for, the others its 198.
    on_top = {"batch 1,000": 401, "no label smoothing": 198, "translate up to 1 px": 198,
              "Nesterov SGD on the BN shifts and head": 198, "the lr ending at 0.1 of its peak": 198}
    cfgs = {change: ablations.row_config(proto, ablations.ROWS[f"the default's crops with {change} (9 epochs)"], 0,
                                         DATA, proto.epochs, pflop) for change in on_top}
    for change, expected in on_top.items():
        cfg = cfgs[change]
        assert cfg.train.progressive == crops.train.progressive and steps(cfg, 45_000) == expected, change
        assert cfg.optim.muon_lr == 0.24, change
    nesterov, tail = cfgs["Nesterov SGD on the BN shifts and head"], cfgs["the lr ending at 0.1 of its peak"]
    assert nesterov.optim.nesterov and not crops.optim.nesterov
    assert tail.schedule.min_lr_factor == 0.1 and crops.schedule.min_lr_factor == 0.0
