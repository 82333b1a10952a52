"""Checkpoints that survive kills and never run code from the file.

File layout: one header line `BUDGETNET-CKPT v1 sha256=<hex> len=<n>\n`, then the `torch.save`
payload. The checksum catches truncation and bit rot before torch ever parses the payload, and
the payload is read with `weights_only=True`, so a crafted pickle is refused rather than run.
Writes go to a temp file in the same directory, are fsynced, then renamed over the target: a
kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from budgetnet.errors import BudgetnetError

_MAGIC = b"BUDGETNET-CKPT v1 "
FORMAT_VERSION = 1


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


def save_checkpoint(path: Path, state: dict[str, Any], backup: Path | None = None) -> None:
    """Serialize `state` (tensors, numbers, strings, lists, dicts) atomically with a checksum;
    `backup`: where the replaced checkpoint goes (see `atomic_write_bytes`)."""
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buf)
    payload = buf.getvalue()
    header = _MAGIC + f"sha256={hashlib.sha256(payload).hexdigest()} len={len(payload)}\n".encode()
    atomic_write_bytes(Path(path), header + payload, backup=backup)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; BudgetnetError if it is damaged or foreign."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BudgetnetError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    end = raw.find(b"\n", 0, 200)
    if not raw.startswith(_MAGIC) or end < 0:
        raise BudgetnetError(f"{path} is not a budgetnet checkpoint")
    try:
        fields = dict(item.split("=", 1) for item in raw[len(_MAGIC):end].decode().split())
        digest, length = fields["sha256"], int(fields["len"])
    except (ValueError, KeyError, UnicodeDecodeError):
        raise BudgetnetError(f"{path} has a damaged checkpoint header") from None
    payload = raw[end + 1:]
    if len(payload) != length:
        raise BudgetnetError(f"{path} is truncated ({len(payload)} of {length} bytes)")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise BudgetnetError(f"{path} is corrupted (checksum mismatch)")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means we refuse the file
        raise BudgetnetError(f"{path} was refused by the safe loader: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise BudgetnetError(f"{path} has an unsupported checkpoint format")
    return state
