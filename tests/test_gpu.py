"""The training step on CUDA, as a GPU user runs it: bf16 autocast, channels_last, compile,
the device-resident loader and an exact resume. Skipped where no CUDA GPU is present (CI);
`benchmarks/gpu_check.sh` runs them on a GPU machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_synthetic, tiny_run_config, write_npz
from test_train_resume import assert_same_history, assert_same_weights, train_whole_and_cut

from budgetnet.cli import main
from budgetnet.data import DeviceLoader
from budgetnet.train import engine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run benchmarks/gpu_check.sh there)"),
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "easy.npz", make_synthetic({"train": 80, "test": 2}, seed=3))


def cuda_config(data: Path, **train: object):
    return tiny_run_config(
        data, data={"input_size": 32},
        model={"preset": "speedrun_2m", "channels": [16, 32, 32], "classes": 3, "input_size": 32, "blocks": [1, 1, 1]},
        optim={"name": "muon", "lr": 0.05},
        train={"device": "cuda", "precision": "auto", "channels_last": "auto", "batch_size": 32, "epochs": 2,
               "threads": None, **train},
    )


def test_auto_precision_and_layout_on_cuda(tmp_path: Path, data: Path) -> None:
    result = engine.train(cuda_config(data), tmp_path / "run", quiet=True)
    s = result.summary
    assert s["device"].startswith("cuda") and s["precision"] in ("bfloat16", "float16")
    assert s["final_val_acc"] > 0.5 and s["train_pflop"] > 0


def test_compiled_step_on_cuda(tmp_path: Path, data: Path) -> None:
    result = engine.train(cuda_config(data, compile=True), tmp_path / "run", quiet=True)
    assert result.summary["final_val_acc"] > 0.5


def test_device_loader_stays_on_the_gpu() -> None:
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    y = torch.randint(0, 3, (64,), device="cuda")
    loader = DeviceLoader(x, y, 16, shuffle=True, seed=0, mean=(0.5,) * 3, std=(0.25,) * 3,
                          dtype=torch.bfloat16, channels_last=True)
    xb, yb = next(iter(loader))
    assert xb.is_cuda and yb.is_cuda and xb.dtype == torch.bfloat16
    assert xb.is_contiguous(memory_format=torch.channels_last)


def test_resume_on_cuda_replays_the_run(tmp_path: Path, data: Path) -> None:
    """Deterministic enough on one GPU in fp32 for the resume check (bf16 is not bitwise)."""
    torch.backends.cudnn.deterministic = True
    whole, cut = train_whole_and_cut(cuda_config(data, precision="fp32"), tmp_path)
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0
    assert_same_history(whole, cut)
    assert_same_weights(whole, cut)
