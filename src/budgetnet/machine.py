"""What machine a figure was measured on: CPU model, the ISA level torch runs at, threads, torch
and the GPU. Run directories, the latency cache and every benchmark name the machine this way,
because throughput (and so seconds) differs several-fold between the CPUs budgetnet
runs on (AVX2-only, AVX512-BF16, AMX) while training FLOPs do not. And how fast it is: the
fastest of a few timed calls, and its GEMM peak."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_units() -> str | None:
    """The CPU's native bf16 units, `AMX-BF16` or `AVX512-BF16`, else None (bf16 emulated).
    torch's capability reads `AVX512` for both, and their bf16 peaks differ about 3x (2048^3
    matmul: 2.1-2.6 TFLOP/s on 2 AMX cores, 0.67-0.81 on 2 AVX512-BF16 cores)."""
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX-BF16"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, the ISA level torch's CPU kernels use (`AVX2`, `AVX512`, ...), its native bf16
    units (`AMX-BF16`, `AVX512-BF16` or None), threads, torch version, and the GPU's name when
    CUDA is available."""
    info: dict[str, Any] = {"cpu": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(),
                            "bf16_units": cpu_bf16_units(), "threads": torch.get_num_threads(),
                            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe_machine(info: Mapping[str, Any] | None = None) -> str:
    """One line for a table's caption, e.g. `AMD EPYC (AVX2), 2 threads, torch 2.13.0+cpu` or
    `Intel(R) Xeon(R) Processor (AVX512, AMX-BF16), 2 threads, torch 2.13.0+cpu`."""
    info = machine_info() if info is None else info
    isa = ", ".join(x for x in (info["capability"], info.get("bf16_units")) if x)
    text = f"{info['cpu']} ({isa}), {info['threads']} threads, torch {info['torch']}"
    return text + (f", GPU {info['gpu']}" if info.get("gpu") else "")


def fastest_seconds(fn: Callable[[], Any], device: torch.device, repeats: int = 3) -> float:
    """The fastest of `repeats` timed calls of `fn` (no warm-up: call it once first). A first
    timing in a fresh process read 25-40% slow on a 2-core Xeon (the shape planner's w32 0.378 s,
    w64 1.179 s a step, against 0.303 and 0.857 s the fastest of three in the same process); a
    slowed call is noise that only adds time, so, as timeit does, the minimum is the estimate."""
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def gemm_peak_tflops(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """TFLOP/s of a 2048x2048 matmul in `dtype` on `device`, the fastest of `repeats` after a
    warm-up: the ceiling a training step of this machine approaches (the flagship's step measured
    30-92% of it on the CPUs budgetnet was measured on, 92% in fp32 on an AVX2 EPYC)."""
    n = 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up: oneDNN / cuBLAS picks its kernel
    return 2 * n**3 / fastest_seconds(lambda: a @ b, device, repeats) / 1e12
