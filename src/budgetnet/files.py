"""Files that readers never see half-written, and the lock that keeps two processes apart.

Every file budgetnet writes (checkpoints, configs, metrics, summaries, plots, reports) goes
through `atomic_write_bytes`: a temp file in the same directory, fsynced, then renamed over
the target, so a kill at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from budgetnet.errors import BudgetnetError
from budgetnet.plots import figure_png

LOCK_NAME = ".lock"


def atomic_write_bytes(path: Path, data: bytes, backup: Path | None = None) -> None:
    """Write `data` to `path` so that readers only ever see the old or the complete new file.

    With `backup`, an existing `path` is moved there, but only once the new data is safely on
    disk: a failed write (e.g. a full disk) leaves both files as they were.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if backup is not None and path.exists():
            os.replace(path, backup)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BudgetnetError(
            f"could not write {path}: {exc.strerror or exc}; the previous file is intact "
            "(free some disk space or choose another --out)"
        ) from None
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented JSON; values JSON has no type for (paths, dates) are written as strings."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A header row, then `rows` (cells already formatted as the file should show them)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def write_png(path: Path, fig: Any) -> None:
    """A matplotlib figure as a PNG file; the figure is closed."""
    atomic_write_bytes(path, figure_png(fig))


class DirLock:
    """An exclusive advisory lock on a directory (the file `name` in it), made with the directory.

    flock is released by the kernel when the process dies (even by SIGKILL), so a killed holder
    never leaves a stale lock behind; the file only records who holds it, for the message.
    Without `wait`, a held lock is a one-line error naming its holder (two trainings into one
    run directory); with `wait`, the lock is waited for (search workers opening one study).
    """

    def __init__(self, directory: Path, *, name: str = LOCK_NAME, wait: bool = False) -> None:
        self.path = Path(directory) / name
        self.wait = wait
        self._file: IO[str] | None = None

    def __enter__(self) -> DirLock:
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")  # noqa: SIM115 - held open until __exit__
        except OSError as exc:  # a path through a file, a read-only disk, no permission
            raise BudgetnetError(f"cannot create the directory {directory}: {exc.strerror or exc}; choose another --out") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise BudgetnetError(f"directory {directory} is in use by {holder}; wait for it or choose another --out") from None
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
