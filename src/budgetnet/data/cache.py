"""Cache of decoded uint8 arrays, keyed by the source's content hash and decode settings.

Layout: `<cache_dir>/arrays/<key>/{x.npy, y.npy, meta.json}`, one entry per source split. An
entry is written into a temporary folder beside it and appears by a single rename, so a reader
sees a complete entry or none; entries that still fail to load are dropped and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from budgetnet.data.sources import ImageArrays, Source

# Bump when the decoded arrays for the same file would differ (e.g. a new resize filter).
CACHE_VERSION = 1


class Loaded(NamedTuple):
    """A loaded split, with the class names and where it came from."""

    arrays: ImageArrays
    classes: list[str]
    cache_path: Path | None  # the cache entry used or written; None when bypassed
    from_cache: bool


def default_cache_dir() -> Path:
    """$BUDGETNET_CACHE, else ~/.cache/budgetnet."""
    env = os.environ.get("BUDGETNET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "budgetnet"


def entry_path(source: Source, split: str, cache_dir: Path) -> Path:
    """Where the cache keeps `split` of `source` as decoded with its current settings."""
    settings = f"v{CACHE_VERSION}|{source.format}|{split}|{source.input_size}|{source.resize}"
    if source.label_set is not None:  # only then, so the keys of single-label datasets stay as they were
        settings += f"|{source.label_set}"
    key = hashlib.sha256(f"{settings}|{source.content_hash}".encode()).hexdigest()[:32]
    return cache_dir / "arrays" / f"{split}-{source.input_size}px-{key}"


def cached_load(
    source: Source,
    split: str,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    select: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Loaded:
    """Decoded `split` of `source`, from the cache when possible.

    `select` maps the split's labels to the indices to keep (e.g. a stratified subset). Without
    a cache entry only those images are decoded, and nothing is stored: a subset costs time in
    proportion to its size, and caching every subset would multiply entries.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = entry_path(source, split, cache_dir)
    if use_cache and (hit := _read(path)) is not None:
        arrays, classes = hit
        if select is not None:
            idx = select(arrays.y)
            arrays = ImageArrays(arrays.x[idx], arrays.y[idx])
        return Loaded(arrays, classes, path, True)
    if select is not None:
        return Loaded(source.load(split, select(source.labels(split))), source.classes, None, False)
    arrays = source.load(split)
    stored = use_cache and _write(path, arrays, source, split)
    return Loaded(arrays, source.classes, path if stored else None, False)


def clear_cache(cache_dir: str | Path | None = None) -> int:
    """Delete every cached array (downloads are kept); returns the bytes freed."""
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "arrays"
    if not root.is_dir():
        return 0
    freed = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    shutil.rmtree(root)
    return freed


def _read(path: Path) -> tuple[ImageArrays, list[str]] | None:
    if not path.is_dir():
        return None
    try:
        classes = json.loads((path / "meta.json").read_text())["classes"]
        # mmap: a subset, or the train/val gather that follows, touches only the pages it needs.
        x = np.load(path / "x.npy", mmap_mode="r", allow_pickle=False)
        y = np.load(path / "y.npy", allow_pickle=False)
        if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y):
            raise ValueError("inconsistent arrays")
    except (OSError, ValueError, KeyError, TypeError):
        # Only a crash before the data reached the disk can leave this; rebuild the entry.
        shutil.rmtree(path, ignore_errors=True)
        return None
    return ImageArrays(x, y), classes


def _write(path: Path, arrays: ImageArrays, source: Source, split: str) -> bool:
    meta = {"classes": source.classes, "source": str(source.path), "format": source.format,
            "labels": source.label_set, "split": split, "content_hash": source.content_hash,
            "input_size": source.input_size, "resize": source.resize, "version": CACHE_VERSION}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(path.parent)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{os.getpid()}-"))
    except OSError as exc:
        warnings.warn(f"cannot write the data cache in {path.parent} ({exc}); continuing "
                      f"without it", stacklevel=3)
        return False
    try:
        for name, array in (("x.npy", arrays.x), ("y.npy", arrays.y)):
            with open(tmp / name, "wb") as f:
                np.save(f, array)
                f.flush()
                os.fsync(f.fileno())  # the rename below must not outrun the data to disk
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.rename(tmp, path)
        return True
    except OSError as exc:
        if path.is_dir():  # another process stored the same entry first: use theirs
            return True
        warnings.warn(f"cannot write the data cache in {path.parent} ({exc}); continuing "
                      f"without it", stacklevel=3)
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_orphans(folder: Path) -> None:
    """Delete the temp folders of writers that died mid-write (a kill, a power loss): each is
    named after its writer's pid, and a writer still alive keeps its own."""
    for tmp in folder.glob(".tmp-*-*"):
        pid = tmp.name.split("-")[1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a number no pid can be): leave its folder be
    return True
