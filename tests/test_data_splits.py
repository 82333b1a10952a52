"""Stratified, seeded splits and subsets; how prepare_data composes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetnet.data import DataConfig, prepare_data, stratified_split
from budgetnet.data.splits import stratified_subset
from budgetnet.errors import BudgetnetError

labels_st = st.lists(st.integers(0, 5), min_size=2, max_size=300).map(np.array)


def _assert_stratified(labels: np.ndarray, picked: np.ndarray, n: int) -> None:
    assert len(picked) == n and len(np.unique(picked)) == n
    assert (np.diff(picked) > 0).all()  # sorted: source order is kept
    for c in np.unique(labels):
        share = n * (labels == c).sum() / len(labels)
        assert abs((labels[picked] == c).sum() - share) < 1


@settings(max_examples=60, deadline=None)
@given(labels=labels_st, frac=st.floats(0, 0.99), seed=st.integers(0, 2**32 - 1))
def test_split_partitions_and_stratifies(labels: np.ndarray, frac: float, seed: int) -> None:
    val_size = int(frac * (len(labels) - 1))
    train, val = stratified_split(labels, val_size, seed)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    _assert_stratified(labels, val, val_size)
    again = stratified_split(labels, val_size, seed)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)


@settings(max_examples=60, deadline=None)
@given(labels=labels_st, frac=st.floats(0.01, 1), seed=st.integers(0, 2**32 - 1))
def test_subset_stratifies(labels: np.ndarray, frac: float, seed: int) -> None:
    n = max(1, int(frac * len(labels)))
    picked = stratified_subset(labels, n, seed)
    _assert_stratified(labels, picked, n)
    assert np.array_equal(stratified_subset(labels, n, seed), picked)


def test_seed_changes_the_draw_and_zero_val() -> None:
    labels = np.repeat(np.arange(10), 100)
    assert not np.array_equal(stratified_split(labels, 100, 0)[1],
                              stratified_split(labels, 100, 1)[1])
    train, val = stratified_split(labels, 0, 0)
    assert len(val) == 0 and len(train) == 1000


@pytest.mark.parametrize("call", [lambda y: stratified_split(y, 10, 0),
                                  lambda y: stratified_split(y, -1, 0),
                                  lambda y: stratified_subset(y, 11, 0),
                                  lambda y: stratified_subset(y, 0, 0)])
def test_bad_sizes(call) -> None:
    with pytest.raises(BudgetnetError):
        call(np.arange(10) % 2)


def test_prepare_subset_then_val(npz_file: Path) -> None:
    data = prepare_data(DataConfig(path=str(npz_file), subset=12, val_size=3, split_seed=4),
                        "cpu")
    assert len(data.train.y) == 9 and len(data.val.y) == 3
    assert data.info["source_counts"]["train"] == {"cat": 4, "dog": 4, "frog": 4}
    assert data.info["counts"]["val"] == {"cat": 1, "dog": 1, "frog": 1}
    all_x = data.train.x.flatten(1)
    assert not (all_x[:, None] == data.val.x.flatten(1)[None]).all(-1).any()  # disjoint


def test_prepare_val_size_zero_and_stats(npz_file: Path, synthetic) -> None:
    data = prepare_data(DataConfig(path=str(npz_file), val_size=0), "cpu")
    assert data.val is None and len(data.train.y) == 24
    x = synthetic.x["train"] / 255
    np.testing.assert_allclose(data.mean, x.mean((0, 1, 2)), atol=1e-9)
    np.testing.assert_allclose(data.std, x.std((0, 1, 2)), atol=1e-9)
    # Stats come from the training part only, also when only val is asked for.
    a = prepare_data(DataConfig(path=str(npz_file), val_size=6), "cpu", splits=("val",))
    b = prepare_data(DataConfig(path=str(npz_file), val_size=6), "cpu")
    assert a.train is None and a.mean == b.mean and a.mean != data.mean


def test_data_config_forbids_extra() -> None:
    with pytest.raises(ValueError):
        DataConfig(path="x", val_sise=3)
    with pytest.raises(ValueError):
        DataConfig(val_size=-1)
    with pytest.raises(BudgetnetError, match="splits"):
        prepare_data(DataConfig(path="x"), "cpu", splits=("training",))
