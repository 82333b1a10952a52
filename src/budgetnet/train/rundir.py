"""The run directory: its name and the recorded environment (its lock: `budgetnet.files.DirLock`)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

import budgetnet
from budgetnet.files import write_json
from budgetnet.machine import cpu_bf16_units, cpu_model


def new_run_dir(root: Path, name: str) -> Path:
    """`root/<name>-<timestamp>`; a numeric suffix keeps two runs in the same second apart."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def environment_info(device: torch.device) -> dict[str, Any]:
    """Versions, CPU model, ISA level and bf16 units, device and threads, and the git commit when run from a
    checkout."""
    info: dict[str, Any] = {
        "budgetnet": budgetnet.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_units": cpu_bf16_units(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        repo = Path(__file__).resolve().parents[3]
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
        info["git_commit"] = commit or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def record_resume(run_dir: Path, device: torch.device, where: dict[str, Any]) -> None:
    """Add this process's environment to `environment.json`'s `resumes`, with `where` (the
    epoch, step and training seconds the run resumed at): a run resumed on another machine
    says which of its seconds were spent where."""
    path = Path(run_dir) / "environment.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):  # lost or damaged: the resumes are still worth recording
        info = {}
    info.setdefault("resumes", []).append({**where, **environment_info(device)})
    write_json(path, info)
