"""Data selection (InfoBatch): the loader's subset epochs, the selection drawn from the recorded
losses, and a run that selects: same steps and compute as one that does not, its losses
recorded and checkpointed. Resuming one mid-epoch is checked in test_train_resume.py, two
processes in test_train_ddp.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config, write_noisy_npz
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetnet.config import load_config
from budgetnet.data import AugmentConfig, BatchAugment, DeviceLoader
from budgetnet.data.augment import CropConfig, FlipConfig
from budgetnet.errors import BudgetnetError
from budgetnet.train import engine
from budgetnet.train.checkpoint import load_checkpoint
from budgetnet.train.selection import DataSelection, DataSelectionConfig

N = 50


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (N, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(N)


def _loader(data: tuple[torch.Tensor, torch.Tensor], **kw: object) -> DeviceLoader:
    augment = BatchAugment(AugmentConfig(crop=CropConfig(padding=2), flip=FlipConfig(mode="alternate")))
    return DeviceLoader(*data, 16, shuffle=True, drop_last=True, seed=5, augment=augment, with_index=True, **kw)


@settings(max_examples=25, deadline=None)
@given(kept=st.sets(st.integers(0, N - 1), min_size=1, max_size=N), epoch=st.integers(0, 9))
def test_a_subset_epoch_fills_its_batches_from_the_subset_evenly(data, kept: set[int], epoch: int) -> None:
    subset = torch.tensor(sorted(kept))
    batches = list(_loader(data).epoch(epoch, subset))
    assert len(batches) == 3  # the epoch keeps its steps whatever it draws from
    index = torch.cat([b[2] for b in batches])
    assert torch.cat([b[1] for b in batches]).equal(index)  # labels are the indices here
    counts = torch.bincount(index, minlength=N)[subset]
    assert set(index.tolist()) <= kept and int(counts.max() - counts.min()) <= 1
    again = list(_loader(data).epoch(epoch, subset))  # a pure function of (seed, epoch, subset)
    assert all(a[0].equal(b[0]) and a[2].equal(b[2]) for a, b in zip(batches, again, strict=True))


def test_set_epoch_takes_a_subset_for_one_iteration_only(data) -> None:
    loader = _loader(data)
    subset = torch.tensor([3, 4])
    loader.set_epoch(2, subset)
    assert set(torch.cat([b[2] for b in loader]).tolist()) == {3, 4}
    # The next plain iteration is epoch 3 of the whole set, as without a subset.
    following = zip((b[2] for b in loader), (b[2] for b in _loader(data).epoch(3)), strict=True)
    assert all(a.equal(b) for a, b in following)
    plain = DeviceLoader(*data, 16, shuffle=True, drop_last=True, seed=5)
    assert all(len(b) == 2 for b in plain)  # (x, y) pairs unless asked for the index
    with pytest.raises(ValueError, match="shuffled"):
        list(DeviceLoader(*data, 16, with_index=True).epoch(0, subset))


def _trained(losses: list[float], prune: float = 0.5, until: float = 0.875) -> DataSelection:
    selection = DataSelection(DataSelectionConfig(prune=prune, until=until), len(losses), seed=1,
                              device=torch.device("cpu"))
    selection.record(torch.arange(len(losses)), torch.tensor(losses))
    return selection


def test_the_first_epoch_and_the_last_eighth_train_on_everything_at_weight_1() -> None:
    fresh = DataSelection(DataSelectionConfig(), 10, seed=0, device=torch.device("cpu"))
    fresh.begin_epoch(0.0)
    assert fresh.epoch_subset(0) is None  # nothing trained yet: nothing is known to be easy
    late = _trained([0.1] * 500 + [5.0] * 500)
    late.begin_epoch(0.9)
    assert late.epoch_subset(7) is None and bool((late.weights == 1).all())


def test_well_learned_images_sit_out_at_the_prune_rate_and_the_rest_count_more() -> None:
    selection = _trained([0.1] * 3000 + [5.0] * 1000 + [math.nan] * 10, prune=0.3)
    selection.begin_epoch(0.2)
    kept = selection.epoch_subset(1)
    assert kept is not None
    dropped = set(range(4010)) - set(kept.tolist())
    assert dropped <= set(range(3000))  # only images under the mean; untrained ones (NaN) stay
    assert abs(len(dropped) / 3000 - 0.3) < 0.04
    easy_kept = [i for i in kept.tolist() if i < 3000]
    assert torch.allclose(selection.weights[easy_kept], torch.tensor(1 / 0.7))
    assert bool((selection.weights[3000:] == 1).all())
    # A replay of the epoch (a resume) draws the same, whatever was recorded since it began.
    selection.record(torch.arange(3000), torch.full((3000,), 9.0))
    assert selection.epoch_subset(1).equal(kept)
    assert not selection.epoch_subset(2).equal(kept)  # another epoch, another draw


def test_the_state_round_trips() -> None:
    a = _trained([0.5, 1.0, 2.0, 4.0])
    a.begin_epoch(0.25)
    a.record(torch.tensor([0]), torch.tensor([7.0]))
    b = DataSelection(DataSelectionConfig(), 4, seed=1, device=torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    assert b.losses.equal(a.losses) and b.epoch_losses.equal(a.epoch_losses) and b.epoch_start == 0.25
    assert b.epoch_subset(3).equal(a.epoch_subset(3)) and b.weights.equal(a.weights)


@pytest.mark.parametrize("bad", [{"prune": 1.0}, {"prune": 0}, {"until": 0}, {"until": 1.5}, {"ratio": 0.5}])
def test_bad_settings_are_refused(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(BudgetnetError, match="data_selection"):
        load_config(overrides={"data": {"path": str(tmp_path / "x.npz")}, "train": {"data_selection": bad}})


def test_a_selecting_run_spends_the_same_compute_and_checkpoints_its_losses(tmp_path: Path) -> None:
    data = write_noisy_npz(tmp_path / "noisy.npz", 300, seed=0)
    runs = {}
    for name, train in (("plain", {}), ("selecting", {"data_selection": {"prune": 0.5, "until": 0.75}})):
        runs[name] = engine.train(tiny_run_config(data, train={"epochs": 4, **train}), tmp_path / name, quiet=True)
    plain, selecting = runs["plain"].summary, runs["selecting"].summary
    for key in ("steps_run", "images_seen", "train_pflop", "epochs_run"):
        assert plain[key] == selecting[key], key
    resume = load_checkpoint(tmp_path / "selecting" / "last.pt").resume
    assert resume is not None and resume.selection is not None
    losses = resume.selection["losses"]
    assert len(losses) == 240 and int(losses.isnan().sum()) == 0  # 8 full steps of 30 an epoch
    assert resume.selection["epoch_start"] == 0.75  # the last epoch's, which trains on everything
    assert load_checkpoint(tmp_path / "plain" / "last.pt").resume.selection is None
    weights = load_checkpoint(tmp_path / "selecting" / "last.pt").model
    assert any(not torch.equal(w, load_checkpoint(tmp_path / "plain" / "last.pt").model[k]) for k, w in weights.items())
