"""What machine a figure was measured on: CPU model, the ISA level torch runs at, threads, torch
and the GPU. Run directories, the latency cache and every benchmark name the machine this way,
because throughput (and so seconds) differs several-fold between the CPUs budgetnet
runs on (AVX2-only, AVX512-BF16, AMX) while training FLOPs do not."""

from __future__ import annotations

import platform
from collections.abc import Mapping
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


def machine_info() -> dict[str, Any]:
    """CPU model, the ISA level torch's CPU kernels use (`AVX2`, `AVX512`, ...), threads, torch
    version, and the GPU's name when CUDA is available."""
    info: dict[str, Any] = {"cpu": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(),
                            "threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe_machine(info: Mapping[str, Any] | None = None) -> str:
    """One line for a table's caption, e.g. `AMD EPYC (AVX2), 2 threads, torch 2.13.0+cpu`."""
    info = machine_info() if info is None else info
    text = f"{info['cpu']} ({info['capability']}), {info['threads']} threads, torch {info['torch']}"
    return text + (f", GPU {info['gpu']}" if info.get("gpu") else "")
