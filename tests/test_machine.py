"""The machine named beside a figure: what it records and how one line reads."""

from __future__ import annotations

import torch

from budgetnet.machine import cpu_bf16_units, cpu_model, describe_machine, machine_info
from budgetnet.runtime import cpu_has_native_bf16


def test_machine_info_names_the_cpu_its_isa_level_threads_and_torch() -> None:
    info = machine_info()
    assert info["cpu"] == cpu_model() and info["cpu"]
    assert info["capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["threads"] == torch.get_num_threads() and info["torch"] == torch.__version__
    assert info["bf16_units"] == cpu_bf16_units() and info["bf16_units"] in ("AMX-BF16", "AVX512-BF16", None)
    assert (info["bf16_units"] is not None) == cpu_has_native_bf16()
    assert ("gpu" in info) == torch.cuda.is_available()


def test_describe_machine_is_one_line_with_the_gpu_only_where_there_is_one() -> None:
    cpu = {"cpu": "AMD EPYC", "capability": "AVX2", "threads": 2, "torch": "2.13.0+cpu"}
    assert describe_machine(cpu) == "AMD EPYC (AVX2), 2 threads, torch 2.13.0+cpu"
    assert describe_machine({**cpu, "capability": "AVX512", "bf16_units": "AMX-BF16"}).startswith("AMD EPYC (AVX512, AMX-BF16), ")
    assert describe_machine({**cpu, "bf16_units": None}) == describe_machine(cpu)  # run dirs saved before the field
    assert describe_machine({**cpu, "gpu": "NVIDIA H200"}).endswith(", GPU NVIDIA H200")
    assert "\n" not in describe_machine()
