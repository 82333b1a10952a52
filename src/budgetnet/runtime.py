"""Where and how models run: device, precision, memory format and compilation.

Training and evaluation both decide these here, so a model is evaluated the way it trained.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from budgetnet.data.cache import default_cache_dir
from budgetnet.errors import BudgetnetError
from budgetnet.machine import cpu_bf16_units

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu. Asking for an unknown or absent device is a user error."""
    if name not in DEVICES:
        raise BudgetnetError(f"device {name!r} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BudgetnetError("device cuda was requested but no CUDA GPU is available; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BudgetnetError("device mps was requested but is not available; use --device cpu or auto")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16. Elsewhere (e.g. AVX2-only CPUs) bf16 convolutions are emulated and
    measured 10x slower than fp32 (a 3x3 64-channel conv, batch 512: 14.8 s vs 1.3 s)."""
    return cpu_bf16_units() is not None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 where the hardware runs it natively (AMX/AVX512-BF16 CPUs, Ampere+ GPUs),
    fp16 on older GPUs, fp32 otherwise. None means no autocast."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def use_channels_last(setting: bool | str, device: torch.device) -> bool:
    """auto: channels_last where the convolutions are bf16/fp16 (native-bf16 CPUs, GPUs). On
    AVX2-only CPUs in fp32 it made ResNet26-B453's step slower (batch norm alone measured 3x
    slower in channels_last: 960 vs 320 ms fwd+bwd at 512x64x32x32)."""
    if isinstance(setting, bool):
        return setting
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def compile_model(model: nn.Module, cache_dir: str | None = None) -> nn.Module:
    """torch.compile, with Inductor's compiled-artifact caches (FX graph and AOTAutograd) kept
    under budgetnet's cache folder (`<cache>/inductor`) rather than Inductor's default in /tmp,
    which a reboot wipes: a later run of the same model and shapes loads its kernels instead
    of compiling them. A $TORCHINDUCTOR_CACHE_DIR of the user's wins."""
    # Imported here: it pulls in all of Inductor (~800 modules, ~1.7 s), which only compiling needs.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as inductor_default

    # Inductor writes its default into the variable the first time it is asked (imports done by
    # the data path ask), so the default found there is Inductor's, not the user's choice.
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, inductor_default()):
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    return torch.compile(model)
