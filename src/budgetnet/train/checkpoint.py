"""Checkpoints that survive kills and never run code from the file.

File layout: one header line `BUDGETNET-CKPT v1 sha256=<hex> len=<n>\n`, then the `torch.save`
payload. The checksum catches truncation and bit rot before torch ever parses the payload, and
the payload is read with `weights_only=True`, so a crafted pickle is refused rather than run.
Writes are atomic (`budgetnet.files`): a kill at any moment leaves either the old file or the
new one, never half of one.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from budgetnet.errors import BudgetnetError
from budgetnet.files import atomic_write_bytes

_MAGIC = b"BUDGETNET-CKPT v1 "
FORMAT_VERSION = 1


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
