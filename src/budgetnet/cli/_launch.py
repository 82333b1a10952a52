"""`budgetnet train --nproc N`: torchrun started on this machine, with N processes of `budgetnet
train` (the ranks of one data-parallel run: train/distributed.py).

This process resolves the config, so a bad option fails here in one line, and hands the ranks
the resolved file; a resumed run's process count is checked before anything starts. torchrun
(`--standalone`: this machine, a free port) starts the ranks in a session of their own, and the
SIGINT or SIGTERM this process gets is passed to torchrun, which passes it to the ranks: they
stop at their next sync, checkpointed, and the exit code is 130 or 143 as for one process.
Importing this module does not import torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from budgetnet.config import RunConfig


def speaks_for_run() -> bool:
    """Whether this process reports the run: rank 0 under torchrun (RANK), any process otherwise."""
    return os.environ.get("RANK", "0") == "0"


def train_in_processes(nproc: int, cfg: RunConfig, resume: Path | None, out: Path | None,
                       options: list[str]) -> int:
    """Train `cfg` into `out` (or resume the run in `resume`) with `nproc` processes on this
    machine; `options` are further `budgetnet train` options for every rank. Returns the exit code."""
    if resume is not None:
        from budgetnet.train.checkpointer import check_processes, recorded_processes

        trained = recorded_processes(resume)
        if trained is not None:
            check_processes(resume, trained, nproc)
        return _torchrun(nproc, ["--resume", str(resume), *options])
    from budgetnet.config import dump_config

    with tempfile.TemporaryDirectory(prefix="budgetnet-") as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(dump_config(cfg))
        return _torchrun(nproc, ["--config", str(config), *(["--out", str(out)] if out else []), *options])


def _torchrun(nproc: int, train_args: list[str]) -> int:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "budgetnet", "train", *train_args]
    # torchrun would give each process one thread (with a warning); CPU ranks share the cores instead.
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc)), **os.environ}
    launcher = subprocess.Popen(command, env=env, start_new_session=True)
    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        launcher.send_signal(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(ValueError):  # not the main thread: signals reach only this process
            previous[sig] = signal.signal(sig, forward)
    try:
        code = launcher.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + forwarded[0] if forwarded else code
