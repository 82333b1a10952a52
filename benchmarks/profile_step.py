"""Where a training step's time goes: a torch.profiler table of budgetnet's step.

Runs the same step as the engine (precision auto, channels_last, SGD Nesterov, label
smoothing) on random data for a few steps after warm-up, and prints the top operators by
self CPU time, then the share of the big groups (convolution, batch norm, activation,
pooling) on the last line.

    .venv/bin/python benchmarks/profile_step.py [--preset flagship] [--batch 256] [--steps 3]
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from budgetnet.models import build_model, get_preset
from budgetnet.runtime import autocast_dtype

GROUPS = {
    "convolution": ("conv", "mkldnn_convolution"),
    "batch norm": ("batch_norm",),
    "activation": ("relu", "gelu", "silu", "threshold_backward", "clamp_min"),
    "pooling": ("max_pool", "avg_pool", "fill_"),  # fill_: zeroing max-pool gradients
    "optimizer": ("_foreach", "sgd", "add_", "mul_"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="flagship")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()

    device = torch.device("cpu")
    amp = autocast_dtype("auto", device)
    model = build_model(get_preset(args.preset)).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(args.batch, 3, 32, 32).to(memory_format=torch.channels_last)
    if amp is not None:
        x = x.to(amp)
    y = torch.randint(0, 10, (args.batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=amp) if amp else nullcontext():
            loss = F.cross_entropy(model(x), y, label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: oneDNN primitive creation
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    averages = prof.key_averages()
    print(f"{args.preset}, batch {args.batch}, precision {amp or 'fp32'}, threads {torch.get_num_threads()}")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in averages)
    shares = {}
    for group, keys in GROUPS.items():
        t = sum(e.self_cpu_time_total for e in averages if any(k in e.key.lower() for k in keys))
        shares[group] = 100 * t / total
    shares["other"] = 100 - sum(shares.values())
    print("step time by group: " + ", ".join(f"{g} {s:.0f}%" for g, s in shares.items()))


if __name__ == "__main__":
    main()
