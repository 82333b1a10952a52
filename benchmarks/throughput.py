"""Training throughput: budgetnet's training step against the seeds' plain PyTorch loop.

For each model (default: the default recipe's model and seed 002's ResNet26-B453; `default`
names the model `budgetnet train` builds with no recipe named, anti-aliased pools included, any
other name a zoo preset as it stands):
- budgetnet: the real `budgetnet.train.engine.train` path (device-resident uint8 data, batched
  crop+flip, precision auto, channels_last), `--epochs` epochs over `--images` images; the
  fastest epoch after the first gives images/s, so one-time warm-up (oneDNN primitive
  creation, compilation) is excluded, and a timed epoch of a few steps that a neighbour on
  the CPU slowed does not set the figure. The warm-up step's seconds (with --compile: the
  compile time) are printed apart. With --compile, budgetnet is measured eager and compiled.
- the seeds' way: fp32 eager, NCHW, a torch DataLoader with per-sample numpy crop+flip+
  normalize and 2 workers, SGD momentum 0.9; timed after one warm-up step.
Effective TFLOP/s = 3 x forward FLOPs per image x images/s (forward + backward ~ 3 forwards).
The machine's own peak is measured in the same run and dtype: a 2048x2048 matmul, and a 3x3
256-channel convolution forward + backward at 8x8 (batch 256); each model's step is printed as
a fraction of the GEMM peak.

    .venv/bin/python benchmarks/throughput.py [--data ZIP] [--models default,speedrun_2m,resnet26_b453]
        [--images 2000] [--epochs 4] [--baseline-steps 3] [--compile]

The last line prints the headline ratios.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from loader_throughput import PerSampleDataset  # noqa: E402  (same per-sample pipeline)

from budgetnet.config import RunConfig, load_config  # noqa: E402
from budgetnet.data import DataConfig, prepare_data  # noqa: E402
from budgetnet.errors import BudgetnetError  # noqa: E402
from budgetnet.machine import fastest_seconds, gemm_peak_tflops  # noqa: E402
from budgetnet.models import ResNetSpec, build_model, get_preset, summarize  # noqa: E402
from budgetnet.runtime import autocast_dtype  # noqa: E402
from budgetnet.train.engine import train  # noqa: E402


def fastest_epoch_rate(metrics: list[dict[str, str]], images_per_epoch: int) -> float:
    """Images/s of the fastest epoch after the first, from a run's metrics.csv rows (whose
    train_seconds are cumulative)."""
    seconds = [float(b["train_seconds"]) - float(a["train_seconds"]) for a, b in zip(metrics, metrics[1:])]
    return images_per_epoch / min(seconds)


def model_spec(name: str) -> ResNetSpec:
    """`default`: the default recipe's model as `budgetnet train` builds it; else a zoo preset."""
    return load_config().model if name == "default" else get_preset(name)


def bench_config(spec: ResNetSpec, data: str, images: int, batch: int, epochs: int, compile: bool) -> RunConfig:
    """The default recipe's training, on `spec`, every step at full size."""
    return load_config(
        overrides={
            "model": spec.model_dump(mode="json"),
            "data": {"path": data, "subset": images, "val_size": 0},
            # A budget too large to bind: its timed steps report the warm-up (compile) time.
            # The recipe's own micro-batches (500) stay: they are part of the step measured.
            # No progressive crops: a 28 px epoch costs 0.755 of the FLOPs this rate is
            # multiplied by, and would be the fastest epoch (read 1.25x high on an AMX CPU).
            "train": {"epochs": epochs, "batch_size": batch, "tta": False, "compile": compile,
                      "time_budget_s": 1e6, "progressive": []},
        }
    )


def budgetnet_rate(cfg: RunConfig) -> tuple[float, str, float]:
    """Images/s of the fastest timed epoch of a real budgetnet training run, its precision, and
    the seconds of its first (warm-up, compiling) step."""
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, Path(tmp) / "run", quiet=True)
        with open(result.run_dir / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        batch = cfg.train.batch_size
        rate = fastest_epoch_rate(rows, cfg.data.subset // batch * batch)
        return rate, result.summary["precision"], result.summary["warmup_seconds"]


def best_seconds(fn, repeats: int = 5) -> float:
    """The fastest of `repeats` timed calls of `fn`, after one untimed warm-up call."""
    fn()  # warm-up: oneDNN primitive creation
    return fastest_seconds(fn, torch.device("cuda" if torch.cuda.is_available() else "cpu"), repeats)


def machine_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """TFLOP/s of a 2048x2048 matmul and of a 3x3 256->256 conv forward+backward (batch 256,
    8x8) in `dtype`: the ceiling a training step of this machine can approach."""
    gemm = gemm_peak_tflops(device, dtype, repeats=5)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device, dtype)
    x = torch.randn(256, 256, 8, 8, device=device, dtype=dtype, requires_grad=True)

    def step() -> None:
        conv(x).sum().backward()

    flops = 3 * 2 * 256 * 256 * 9 * 64 * 256  # forward + backward (input and weight grads)
    return gemm, flops / best_seconds(step) / 1e12


def seeds_way_rate(spec: ResNetSpec, x: np.ndarray, y: np.ndarray, batch: int, steps: int) -> float:
    """Images/s of a plain fp32 eager loop fed by a per-sample DataLoader (2 workers)."""
    model = build_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(PerSampleDataset(x, y), batch, shuffle=True, drop_last=True, num_workers=2)
    it = iter(loader)
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        xb, yb = next(it)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_zip = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-train-jpg.zip"
    parser.add_argument("--data", default=str(default_zip))
    parser.add_argument("--models", default="default,resnet26_b453",
                        help="zoo presets, or `default`: the default recipe's model")
    parser.add_argument("--images", type=int, default=2000, help="images per budgetnet epoch")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=4, help="budgetnet epochs; all but the first are timed")
    parser.add_argument("--baseline-steps", type=int, default=3)  # 4 batches of 500: all 2,000 images
    parser.add_argument("--compile", action="store_true", help="also measure budgetnet with torch.compile")
    args = parser.parse_args()
    if args.epochs < 2 or args.baseline_steps < 1:
        parser.error("--epochs must be at least 2 (the first is warm-up, not timed) and --baseline-steps at least 1")
    if (args.baseline_steps + 1) * args.batch > args.images:
        parser.error("--images must hold --baseline-steps + 1 batches: the seeds' loop draws them once, "
                     "its first untimed")
    try:
        specs = {name: model_spec(name) for name in args.models.split(",")}
    except BudgetnetError as err:
        parser.error(f"--models: {err}")

    data = prepare_data(DataConfig(path=args.data, val_size=0, subset=args.images), "cpu")
    x = data.train.x.permute(0, 2, 3, 1).numpy()
    y = data.train.y.numpy()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"precision auto -> {autocast_dtype('auto', device) or 'fp32'}, batch {args.batch}")
    dtype = autocast_dtype("auto", device) or torch.float32
    gemm_peak, conv_peak = machine_peak(device, dtype)
    print(f"machine peak ({str(dtype).removeprefix('torch.')}): GEMM 2048^3 {gemm_peak:.3f} TFLOP/s, "
          f"conv 3x3 fwd+bwd {conv_peak:.3f} TFLOP/s")
    headline = [f"GEMM peak {gemm_peak:.3f} TFLOP/s"]
    for name, spec in specs.items():
        flops = summarize(spec).flops
        fast, precision, warmup = budgetnet_rate(
            bench_config(spec, args.data, args.images, args.batch, args.epochs, compile=False))
        slow = seeds_way_rate(spec, x, y, args.batch, args.baseline_steps)
        tflops = 3 * flops * fast / 1e12
        print(f"{name}: budgetnet {fast:7.1f} img/s ({tflops:.3f} TFLOP/s, {precision}, first step {warmup:.1f}s) | "
              f"seeds' way {slow:7.1f} img/s ({3 * flops * slow / 1e12:.3f} TFLOP/s, fp32) | "
              f"ratio {fast / slow:.2f}x | {100 * tflops / gemm_peak:.0f}% of GEMM peak")
        headline.append(f"{name} {fast:.0f} img/s {tflops:.3f} TFLOP/s = {100 * tflops / gemm_peak:.0f}% of peak, "
                        f"{fast / slow:.2f}x the seeds' loop")
        if args.compile:
            compiled, _, compile_s = budgetnet_rate(
                bench_config(spec, args.data, args.images, args.batch, args.epochs, compile=True))
            print(f"{name}: budgetnet compiled {compiled:7.1f} img/s ({3 * flops * compiled / 1e12:.3f} TFLOP/s), "
                  f"compile {compile_s:.1f}s | compiled/eager {compiled / fast:.2f}x")
            headline.append(f"compiled {compiled / fast:.2f}x of eager")
    print("throughput: " + "; ".join(headline))


if __name__ == "__main__":
    main()
