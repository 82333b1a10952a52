"""`--compile`: a compiled run trains, reports its compile (warm-up) time apart from training
time, and leaves Inductor's artifacts in budgetnet's cache folder, where a second run finds them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_synthetic, write_npz

from budgetnet.config import load_config
from budgetnet.train import engine
from budgetnet.train.callbacks import read_metrics


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "easy.npz", make_synthetic({"train": 20, "test": 2}, size=16))


def test_compiled_runs_cache_their_kernels_in_the_budgetnet_cache(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    from torch._dynamo.utils import counters

    cache = tmp_path / "cache"
    cfg = load_config(overrides={
        "data": {"path": str(data), "val_size": 15, "cache_dir": str(cache), "input_size": 16},
        "model": {"preset": None, "blocks": [1], "channels": [8], "classes": 3, "input_size": 16},
        "train": {"epochs": 1, "batch_size": 15, "precision": "fp32", "threads": 1, "device": "cpu",
                  "compile": True, "time_budget_s": 1e6, "tta": False},
    })
    torch._dynamo.reset()
    counters.clear()
    first = engine.train(cfg, tmp_path / "first", quiet=True)
    assert first.summary["warmup_seconds"] > 0
    # It trains as the uncompiled model does: the same steps and, up to Inductor's reordering of
    # float operations, the same losses.
    eager_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"compile": False})})
    eager = engine.train(eager_cfg, tmp_path / "eager", quiet=True)
    assert first.summary["steps_run"] == eager.summary["steps_run"] > 0
    compiled_rows, eager_rows = read_metrics(tmp_path / "first" / "metrics.csv"), read_metrics(tmp_path / "eager" / "metrics.csv")
    assert len(compiled_rows) == len(eager_rows) == 1
    for key in ("train_loss", "val_loss"):
        assert compiled_rows[0][key] == pytest.approx(eager_rows[0][key], rel=1e-3), key
    assert any((cache / "inductor").rglob("*")), "no compiled artifacts in the budgetnet cache"
    assert counters["inductor"]["fxgraph_cache_miss"] > 0

    torch._dynamo.reset()  # a new process, as far as compilation goes
    counters.clear()
    engine.train(cfg, tmp_path / "second", quiet=True)
    assert counters["inductor"]["fxgraph_cache_hit"] > 0
    assert counters["inductor"]["fxgraph_cache_miss"] == 0
    torch._dynamo.reset()
