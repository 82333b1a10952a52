"""The decoded-array cache: hits, keys, bypass, clearing, atomic writes, partial decodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import Synthetic, write_image_folder

from budgetnet.cli import main
from budgetnet.data import DataConfig, clear_cache, open_source, prepare_data
from budgetnet.data.cache import cached_load, entry_path


def _entries(cache: Path) -> list[str]:
    arrays = cache / "arrays"
    return sorted(p.name for p in arrays.iterdir()) if arrays.exists() else []


def test_second_load_is_served_from_cache(image_zip: Path, isolated_cache: Path) -> None:
    first = cached_load(open_source(image_zip), "train")
    assert not first.from_cache and first.cache_path.is_dir()
    second = cached_load(open_source(image_zip), "train")
    assert second.from_cache and second.cache_path == first.cache_path
    np.testing.assert_array_equal(second.arrays.x, first.arrays.x)
    np.testing.assert_array_equal(second.arrays.y, first.arrays.y)
    assert second.classes == first.classes
    assert _entries(isolated_cache) == [first.cache_path.name]  # no temp folders left


def test_no_cache_bypasses(image_folder: Path, isolated_cache: Path) -> None:
    loaded = cached_load(open_source(image_folder), "train", use_cache=False)
    assert loaded.cache_path is None and not loaded.from_cache
    assert _entries(isolated_cache) == []
    data = prepare_data(DataConfig(path=str(image_folder), val_size=3, cache=False), "cpu")
    assert data.info["cache"]["from_cache"] is False and _entries(isolated_cache) == []


def test_key_follows_content_and_settings(tmp_path: Path, synthetic: Synthetic,
                                          isolated_cache: Path) -> None:
    root = write_image_folder(tmp_path / "d", synthetic, splits=("train",))
    key = entry_path(open_source(root), "train", isolated_cache)
    assert entry_path(open_source(root), "train", isolated_cache) == key
    assert entry_path(open_source(root, resize="stretch"), "train", isolated_cache) != key
    assert entry_path(open_source(root, input_size=16), "train", isolated_cache) != key
    cached_load(open_source(root), "train")
    victim = root / "train" / "cat" / "0000.png"
    victim.write_bytes(victim.read_bytes())  # same bytes, new mtime: treated as changed
    os.utime(victim, ns=(1, 1))
    assert entry_path(open_source(root), "train", isolated_cache) != key
    assert not cached_load(open_source(root), "train").from_cache


def test_clear_cache(image_folder: Path, isolated_cache: Path, capsys: pytest.CaptureFixture
                     ) -> None:
    cached_load(open_source(image_folder), "train")
    assert clear_cache() > 0 and _entries(isolated_cache) == []
    assert clear_cache() == 0
    cached_load(open_source(image_folder), "test")
    assert main(["data", "clear-cache"]) == 0
    assert "removed" in capsys.readouterr().out and _entries(isolated_cache) == []


def test_damaged_entry_is_rebuilt(image_folder: Path) -> None:
    first = cached_load(open_source(image_folder), "train")
    (first.cache_path / "x.npy").write_bytes(b"\x93NUMPY garbage")
    again = cached_load(open_source(image_folder), "train")
    assert not again.from_cache and again.arrays.x.shape == first.arrays.x.shape
    assert cached_load(open_source(image_folder), "train").from_cache


def test_failed_write_leaves_nothing(image_folder: Path, isolated_cache: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = np.save

    def save_then_fail(file, array) -> None:
        real_save(file, array)
        if array.dtype == np.int64:  # after x.npy is complete: the entry is half-written
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", save_then_fail)
    with pytest.warns(UserWarning, match="No space left"):
        loaded = cached_load(open_source(image_folder), "train")
    assert loaded.cache_path is None and len(loaded.arrays.y) == 24
    assert _entries(isolated_cache) == []


def test_a_killed_writers_temp_folder_is_removed_by_the_next_write(image_folder: Path, isolated_cache: Path) -> None:
    """A writer SIGKILLed mid-write leaves `.tmp-<pid>-*`; the next write removes it once that
    pid is gone, and leaves a live writer's folder alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    arrays = isolated_cache / "arrays"
    orphan, live = arrays / f".tmp-{dead.pid}-abc", arrays / f".tmp-{os.getpid()}-xyz"
    for folder in (orphan, live):
        folder.mkdir(parents=True)
        (folder / "x.npy").write_bytes(b"half an array")
    loaded = cached_load(open_source(image_folder), "train")
    assert loaded.cache_path.is_dir()
    assert not orphan.exists() and live.exists()


def test_subset_decodes_only_the_subset(image_zip: Path, isolated_cache: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = DataConfig(path=str(image_zip), subset=9, val_size=3)
    decoded: list[int] = []
    source_cls = type(open_source(image_zip))
    real = source_cls._read
    monkeypatch.setattr(source_cls, "_read", lambda self, n: decoded.append(1) or real(self, n))
    cold = prepare_data(cfg, "cpu", splits=("train", "val"))
    # The 9 images, and the first image's header for the input size; subsets are not cached.
    assert len(decoded) == 9 + 1 and _entries(isolated_cache) == []
    prepare_data(DataConfig(path=str(image_zip), val_size=3), "cpu")  # fills the cache
    warm = prepare_data(cfg, "cpu", splits=("train", "val"))
    assert warm.info["cache"]["from_cache"]
    for part in ("train", "val"):  # the same images whichever way they were read
        assert getattr(warm, part).x.equal(getattr(cold, part).x)
        assert getattr(warm, part).y.equal(getattr(cold, part).y)


def test_meta_is_readable(image_folder: Path) -> None:
    loaded = cached_load(open_source(image_folder), "train")
    meta = json.loads((loaded.cache_path / "meta.json").read_text())
    assert meta["classes"] == ["cat", "dog", "frog"] and meta["split"] == "train"
