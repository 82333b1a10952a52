"""Stratified, seeded splits and subsets of a labelled set.

Class quotas are proportional to class frequencies (largest remainder, so they add up exactly
and each is within one of its exact share); which images fill a quota is a seeded random choice.
Returned indices are sorted, so the kept images keep their source order. K-fold cross
validation deals each class, in a seeded order, round-robin into K folds: the folds partition
the images and each holds every class's share to within one image.
"""

from __future__ import annotations

import numpy as np

from budgetnet.errors import BudgetnetError

# Distinct streams for the uses of one user seed, so --subset does not shape the val draw.
_SPLIT_STREAM, _SUBSET_STREAM, _FOLD_STREAM = 0, 1, 2


def _quotas(counts: np.ndarray, n: int) -> np.ndarray:
    exact = counts * (n / counts.sum())
    quota = np.floor(exact).astype(np.int64)
    # Largest remainders get the leftover units; stable sort breaks ties by class order.
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: n - quota.sum()]] += 1
    return quota


def _stratified_pick(labels: np.ndarray, n: int, seed: int, stream: int) -> np.ndarray:
    """Sorted indices of a stratified random sample of `n` of `labels`."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    rng = np.random.default_rng([seed, stream])
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    picked = [rng.choice(members, size=quota, replace=False)
              for members, quota in zip(by_class, _quotas(counts, n))]
    return np.sort(np.concatenate(picked))


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of `labels` into (train_idx, val_idx), with `val_size` stratified val images.

    `val_size` 0 gives every index to train.
    """
    labels = np.asarray(labels)
    if val_size < 0 or val_size >= len(labels):
        raise BudgetnetError(f"--val-size {val_size} must be at least 0 and below the "
                             f"{len(labels)} training images.")
    val = _stratified_pick(labels, val_size, seed, _SPLIT_STREAM)
    train = np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
    return train, val


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a stratified sample of `n` of `labels`."""
    labels = np.asarray(labels)
    if n < 1 or n > len(labels):
        raise BudgetnetError(f"--subset {n} must be between 1 and the {len(labels)} training "
                             f"images.")
    return _stratified_pick(labels, n, seed, _SUBSET_STREAM)


def stratified_fold(labels: np.ndarray, k: int, of: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) of fold `k` of `of` stratified folds of `labels`: val is fold k,
    train the other folds. The folds of one (`of`, `seed`) are disjoint and cover every index."""
    labels = np.asarray(labels)
    if not 0 <= k < of or of > len(labels):
        raise BudgetnetError(f"fold {k} of {of} needs 0 <= k < of <= the {len(labels)} training images; "
                             "choose fewer folds")
    _, inverse = np.unique(labels, return_inverse=True)
    rng = np.random.default_rng([seed, _FOLD_STREAM])
    position = np.empty(len(labels), dtype=np.int64)
    for c in range(inverse.max() + 1):
        members = np.flatnonzero(inverse == c)
        position[rng.permutation(members)] = np.arange(len(members))
    # Class c's i-th image (in the seeded order) goes to fold i mod `of`; offsetting each class
    # by the images dealt before it keeps the folds' sizes within one of each other overall.
    offset = np.concatenate([[0], np.cumsum(np.bincount(inverse))[:-1]])
    in_val = (position + offset[inverse]) % of == k
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)
