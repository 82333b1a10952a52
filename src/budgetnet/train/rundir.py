"""The run directory: naming, an exclusive lock, and the recorded environment."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import torch

from budgetnet.errors import BudgetnetError

LOCK_NAME = ".lock"


def new_run_dir(root: Path, name: str) -> Path:
    """`root/<name>-<timestamp>`; a numeric suffix keeps two runs in the same second apart."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class RunLock:
    """An advisory lock on the run directory, held for the whole training.

    flock is released by the kernel when the process dies (even by SIGKILL), so a killed run
    never leaves a stale lock behind; the file only records who holds it, for the message.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._file: IO[str] | None = None

    def __enter__(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as exc:  # a path through a file, a read-only disk, no permission
            raise BudgetnetError(
                f"cannot create the run directory {self.path.parent}: {exc.strerror or exc}; choose another --out"
            ) from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise BudgetnetError(f"run directory {self.path.parent} is in use by {holder}; wait for it or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {platform.node()}")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def environment_info(device: torch.device) -> dict[str, Any]:
    """Versions, device and threads, and the git commit when run from a checkout."""
    import budgetnet

    info: dict[str, Any] = {
        "budgetnet": budgetnet.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
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


def write_json(path: Path, obj: Any) -> None:
    from budgetnet.train.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
