"""Where a training step's time goes: a torch.profiler table of budgetnet's step.

Runs the default recipe's step as the engine does (its optimizer, label smoothing and
micro-batches; precision auto, channels_last) on random data, on the recipe's model (`default`)
or a zoo preset's, for a few steps after one warm-up step. Data loading and augmentation are
left out: `throughput.py` times the whole loop. Prints the top operators by self CPU time, the
share of the big operator groups (convolution, batch norm, activation, pooling), and the share
of the step's three phases (forward with the loss, backward, optimizer).

    .venv/bin/python benchmarks/profile_step.py [--model default] [--batch 1000] [--steps 3]
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).parent))
from throughput import model_spec  # noqa: E402  (`default` or a preset, as the throughput benchmark reads it)

from budgetnet.config import load_config  # noqa: E402
from budgetnet.errors import BudgetnetError  # noqa: E402
from budgetnet.models import build_model  # noqa: E402
from budgetnet.runtime import autocast_dtype  # noqa: E402
from budgetnet.train.optim import build_optimizer  # noqa: E402

GROUPS = {
    "convolution": ("conv", "mkldnn_convolution"),
    "batch norm": ("batch_norm",),
    "activation": ("relu", "gelu", "silu", "threshold_backward", "clamp_min"),
    "pooling": ("max_pool", "avg_pool", "fill_"),  # fill_: zeroing max-pool gradients
}
PHASES = ("forward", "backward", "optimizer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="a zoo preset, or `default`: the default recipe's model")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args()
    try:
        spec = model_spec(args.model)
    except BudgetnetError as err:
        parser.error(f"--model: {err}")
    if (args.batch is not None and args.batch < 1) or args.steps < 1:
        parser.error("--batch and --steps must be at least 1")
    recipe = load_config()
    batch = args.batch or recipe.train.batch_size
    micro = min(recipe.train.micro_batch or batch, batch)

    device = torch.device("cpu")
    amp = autocast_dtype("auto", device)
    model = build_model(spec).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe.optim, lookahead=recipe.train.lookahead)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for xs, ys in zip(x.split(micro), y.split(micro)):  # the engine's micro-batches
            with record_function("forward"), torch.autocast("cpu", dtype=amp) if amp else nullcontext():
                loss = F.cross_entropy(model(xs), ys, label_smoothing=recipe.train.label_smoothing) * len(ys) / batch
            with record_function("backward"):
                loss.backward()
        with record_function("optimizer"):
            optimizer.step()

    step()  # warm-up: oneDNN primitive creation
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    averages = prof.key_averages()
    print(f"{args.model}, batch {batch} in slices of {micro}, optimizer {type(optimizer).__name__}, "
          f"precision {amp or 'fp32'}, threads {torch.get_num_threads()}")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in averages)
    shares = {}
    for group, keys in GROUPS.items():
        t = sum(e.self_cpu_time_total for e in averages if any(k in e.key.lower() for k in keys))
        shares[group] = 100 * t / total
    shares["other"] = 100 - sum(shares.values())
    print("step time by operator group: " + ", ".join(f"{g} {s:.0f}%" for g, s in shares.items()))
    phases = {e.key: e.cpu_time_total for e in averages if e.key in PHASES}
    print("step time by phase: " + ", ".join(f"{p} {100 * phases[p] / total:.0f}%" for p in PHASES))


if __name__ == "__main__":
    main()
