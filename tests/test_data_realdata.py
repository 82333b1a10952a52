"""The shared CIFAR-10 JPEG zip: a small stratified subset loads (skipped when absent).

Only the subset is decoded (no cache involved), so this stays fast; the full 50,000-image
decode and the cached reload are checked by hand with `budgetnet data info`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetnet.data import DataConfig, prepare_data

SHARED_ZIP = Path(__file__).parents[1] / ".." / "shared" / "data" / "cifar10-train-jpg.zip"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_ZIP.exists(), reason=f"{SHARED_ZIP} is absent")
def test_shared_zip_subset_loads() -> None:
    cfg = DataConfig(path=str(SHARED_ZIP), subset=300, val_size=100, cache=False)
    data = prepare_data(cfg, "cpu")
    assert data.classes == CLASSES
    assert data.train.x.shape == (200, 3, 32, 32) and data.val.x.shape == (100, 3, 32, 32)
    assert data.info["counts"]["train"] == dict.fromkeys(CLASSES, 20)
    assert data.info["counts"]["val"] == dict.fromkeys(CLASSES, 10)
    assert all(0.35 < m < 0.6 for m in data.mean) and all(0.15 < s < 0.35 for s in data.std)
