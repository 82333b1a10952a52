"""2x2 max-pool kernels, forward + backward, in the step's dtype and memory format: why the
speed-run stages keep `nn.MaxPool2d` though pooling is ~12% of their step on a bf16 CPU.

Times `F.max_pool2d` against two formulations built from other ops (a reshape + `amax`, and
the elementwise maximum of the four strided 2x2 phases) on the three pooled shapes of the
default recipe's 500-image slices, checking that each gives the same output; then what
`pool_blur`'s anti-aliased pool costs on the same shapes (its stride-1 max alone, and whole);
with --compile, also the anti-aliased pool under `torch.compile` (Inductor generates its own
loops for the max and its backward, where eager `max_pool2d` saves int64 indices and scatters
through them), its first call's seconds (the compile) apart, and whether its output and input
gradient equal eager's (summing bf16 gradients in another order would change training's numerics).

    .venv/bin/python benchmarks/pool_kernels.py [--batch 500] [--repeats 5] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from throughput import best_seconds  # noqa: E402  (the peak timings' warm-up + fastest-of-N)

from budgetnet.models.blocks import MaxBlurPool  # noqa: E402
from budgetnet.runtime import autocast_dtype  # noqa: E402


def reshape_amax(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c).amax(dim=(2, 4)).permute(0, 3, 1, 2)


def phase_maximum(x: torch.Tensor) -> torch.Tensor:
    top = torch.maximum(x[:, :, ::2, ::2], x[:, :, ::2, 1::2])
    return torch.maximum(top, torch.maximum(x[:, :, 1::2, ::2], x[:, :, 1::2, 1::2]))


KERNELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F.max_pool2d": lambda x: F.max_pool2d(x, 2), "reshape + amax": reshape_amax, "four phases, maximum": phase_maximum}


def fwd_bwd_ms(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    leaf = x.detach().requires_grad_(True)
    # A dense gradient in the output's memory format, as the next layer's backward hands it.
    # `.sum().backward()`'s expanded ones send max_pool2d's backward down a slower path.
    grad = torch.ones_like(fn(leaf))  # `leaf`, not `x`: a compiled fn would recompile for a no-grad input

    def step() -> None:
        leaf.grad = None  # each backward writes a fresh gradient, not an accumulation
        fn(leaf).backward(grad)

    return 1000 * best_seconds(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time the anti-aliased pool compiled")
    args = parser.parse_args()
    dtype = autocast_dtype("auto", torch.device("cpu")) or torch.float32
    print(f"dtype {str(dtype).removeprefix('torch.')}, channels_last, threads {torch.get_num_threads()}")
    for c, side in ((64, 32), (256, 16), (256, 8)):  # speedrun_2m's three conv-pool stages
        x = torch.randn(args.batch, c, side, side).to(dtype).to(memory_format=torch.channels_last)
        reference = F.max_pool2d(x, 2)
        cells = []
        for name, fn in KERNELS.items():
            same = "" if torch.equal(fn(x), reference) else " (DIFFERS)"
            cells.append(f"{name} {fwd_bwd_ms(fn, x, args.repeats):.1f} ms{same}")
        print(f"{args.batch}x{c}x{side}x{side}: " + " | ".join(cells))
        stride1 = fwd_bwd_ms(lambda t: F.max_pool2d(t, 2, stride=1), x, args.repeats)
        eager = MaxBlurPool(c, 2)
        print(f"  anti-aliased (pool_blur): max at stride 1 {stride1:.1f} ms | "
              f"MaxBlurPool {fwd_bwd_ms(eager, x, args.repeats):.1f} ms")
        if args.compile:
            print("  " + compiled_pool(eager, x, args.repeats))


def input_grad(pool: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.detach().requires_grad_(True)
    out = pool(leaf)
    out.float().square().sum().backward()  # a gradient that varies per element, unlike .sum()'s ones
    return out.detach(), leaf.grad


def compiled_pool(eager: torch.nn.Module, x: torch.Tensor, repeats: int) -> str:
    compiled = torch.compile(eager, dynamic=False)  # each shape its own graph: a dynamic recompile failed in Inductor
    start = time.perf_counter()
    out, grad = input_grad(compiled, x)  # the first call compiles forward and backward
    first_s = time.perf_counter() - start
    ref_out, ref_grad = input_grad(eager, x)
    same = "equal" if torch.equal(out, ref_out) else "DIFFERENT"
    changed = (grad != ref_grad).float().mean().item()
    return (f"compiled MaxBlurPool {fwd_bwd_ms(compiled, x, repeats):.1f} ms (first call {first_s:.0f} s; "
            f"forward {same}; input gradient differs from eager at {100 * changed:.3f}% of elements)")


if __name__ == "__main__":
    main()
