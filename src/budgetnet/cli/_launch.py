"""`budgetnet train --nproc N`: torchrun started on this machine, with N processes of `budgetnet
train` (the ranks of one data-parallel run: train/distributed.py).

This process resolves the config, so a bad option fails here in one line, and hands the ranks
the resolved file; a resumed run's process count is checked before anything starts. torchrun
(`--standalone`: this machine, a free port) starts the ranks in a session of their own, and the
SIGINT or SIGTERM this process gets is passed to torchrun, which passes it to the ranks: they
stop at their next sync, checkpointed, and the exit code is 130 or 143 as for one process.
A user error inside a rank (exit code 2) is one line here too: the ranks' stderr is relayed
until a rank leaves its message in the folder named by BUDGETNET_RANK_ERRORS; torchrun's
failure report and the other ranks' broken connections that follow are dropped, and that one
line is printed with exit code 2. Importing this module does not import torch.
"""

from __future__ import annotations

import codecs
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from budgetnet.config import RunConfig


def speaks_for_run() -> bool:
    """Whether this process reports the run: rank 0 under torchrun (RANK), any process otherwise."""
    return os.environ.get("RANK", "0") == "0"


RANK_ERRORS = "BUDGETNET_RANK_ERRORS"


def note_rank_error(message: str) -> None:
    """Leave a rank's one-line error where its launcher finds it (nothing outside a launch)."""
    folder = os.environ.get(RANK_ERRORS)
    if folder:
        with suppress(OSError):
            (Path(folder) / f"rank-{os.environ.get('RANK', '0')}").write_text(message)


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
    from budgetnet.config import dump_config, fit_to_data

    cfg = fit_to_data(cfg)  # a missing or unreadable dataset fails here, before any process starts
    with tempfile.TemporaryDirectory(prefix="budgetnet-") as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(dump_config(cfg))
        return _torchrun(nproc, ["--config", str(config), *(["--out", str(out)] if out else []), *options])


def _torchrun(nproc: int, train_args: list[str]) -> int:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "budgetnet", "train", *train_args]
    # torchrun would give each process one thread (with a warning); CPU ranks share the cores instead.
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc)), **os.environ}
    if sys.stderr.isatty():  # the ranks write into the pipe below: rank 0 keeps its live progress bar
        env.setdefault("TTY_COMPATIBLE", "1")
        env.setdefault("COLUMNS", str(shutil.get_terminal_size().columns))
    with tempfile.TemporaryDirectory(prefix="budgetnet-ranks-") as folder:
        errors = Path(folder)
        env[RANK_ERRORS] = folder
        launcher = subprocess.Popen(command, env=env, start_new_session=True, stderr=subprocess.PIPE)
        assert launcher.stderr is not None
        relay = threading.Thread(target=_relay, args=(launcher.stderr, errors), daemon=True)
        relay.start()
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
            relay.join()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if forwarded:
            return 128 + forwarded[0]
        noted = sorted(errors.iterdir(), key=lambda p: int(p.name.removeprefix("rank-")))
        if noted:
            print(f"budgetnet: error: {noted[0].read_text()}", file=sys.stderr)
            return 2
        return code


def _relay(pipe: IO[bytes], errors: Path) -> None:
    """Copy the ranks' (and torchrun's) stderr to this process's as it comes, chunk by chunk (a
    live progress bar), until a rank has noted a user error in `errors`; read the rest unshown."""
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := os.read(pipe.fileno(), 1 << 16):
        if not any(errors.iterdir()):
            sys.stderr.write(text.decode(chunk))
            sys.stderr.flush()
