"""Data: read a dataset once, keep it as uint8 tensors on the device, batch and augment there.

`prepare_data(cfg, device)` is the one call a training or evaluation run needs; see
docs/architecture.md for how the submodules divide the work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from budgetnet.data.augment import AugmentConfig, BatchAugment
from budgetnet.data.cache import Loaded, cached_load, clear_cache, default_cache_dir
from budgetnet.data.loader import DeviceLoader, channel_stats
from budgetnet.data.sources import Download, ImageArrays, LabelSet, Resize, Source, open_source
from budgetnet.data.splits import stratified_fold, stratified_split, stratified_subset
from budgetnet.errors import BudgetnetError

__all__ = [
    "AugmentConfig", "BatchAugment", "DataConfig", "DataShape", "DeviceLoader", "Fold", "PreparedData", "Split",
    "channel_stats", "clear_cache", "data_shape", "open_source", "prepare_data", "stratified_split",
]

SplitName = Literal["train", "val", "test"]


class Fold(BaseModel):
    """Fold `k` (from 0) of `of` stratified folds of the training images, for K-fold cross
    validation: that fold is the validation split, the other folds train."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(ge=0)
    of: int = Field(ge=2, le=1000)

    @model_validator(mode="after")
    def _k_below_of(self) -> Fold:
        if self.k >= self.of:
            raise ValueError(f"fold k={self.k} must be below of={self.of} (folds count from 0)")
        return self


class DataConfig(BaseModel):
    """Where the data is and how to split it."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="dataset path; None with download: the cache")
    download: bool | Download = Field(False, description="fetch a dataset into `path` if it is not there: "
                                                         "true or cifar10 for CIFAR-10, cifar100 for CIFAR-100")
    labels: LabelSet | None = Field(None, description="CIFAR-100's label set: fine (100 classes, the "
                                                      "default) or coarse (its 20 superclasses)")
    resize: Resize | None = Field(None, description="how to fit images of another size")
    input_size: int | None = Field(None, ge=1, description="image side the model takes; None: the images' "
                                                           "own (CIFAR: 32; folders, .npz: the first image's)")
    val_size: int = Field(5000, ge=0, description="stratified validation images carved "
                                                   "from train; 0: train on everything; with "
                                                   "fold, the fold replaces them")
    split_seed: int = Field(0, description="seed of the val split and the subset")
    subset: int | None = Field(None, ge=1, description="use a stratified sample of this many "
                                                       "training images (before the val split)")
    fold: Fold | None = Field(None, description="validate on this fold of the training images "
                                                "instead of val_size random ones")
    cache: bool = Field(True, description="reuse decoded arrays from the cache")
    cache_dir: str | None = Field(None, description="default: $BUDGETNET_CACHE or "
                                                    "~/.cache/budgetnet")

    @model_validator(mode="after")
    def _fold_needs_validation(self) -> DataConfig:
        # val_size 0 is how the engine and evaluation know a run has no validation split.
        if self.fold is not None and self.val_size == 0:
            raise ValueError("data.fold makes a fold the validation split, but data.val_size is 0 "
                             "(no validation split); drop val_size 0 or the fold")
        return self


class Split(NamedTuple):
    """Images (uint8 N,C,H,W) and labels (int64 N) on the device."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass
class PreparedData:
    """The requested splits on the device.

    `mean`/`std` (per channel, [0, 1] units) come from the training part and are None when
    neither train nor val was requested (evaluation takes them from the checkpoint). `info`:
    source, format, labels (CIFAR-100's label set, else None), content_hash, classes,
    image_size, counts (per prepared split and class),
    source_counts (per source split read, after `subset`), cache (dir, used, paths,
    from_cache), seconds.
    """

    train: Split | None
    val: Split | None
    test: Split | None
    classes: list[str]
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    info: dict = field(default_factory=dict)


def prepare_data(
    cfg: DataConfig,
    device: torch.device | str = "cpu",
    splits: tuple[SplitName, ...] = ("train", "val"),
) -> PreparedData:
    """Load, split and move to `device` the requested splits of `cfg.path`.

    train and val both come from the source's train split (val: `cfg.val_size` stratified
    images; with `subset`, drawn from the subset); test is the source's own test split, read
    only when asked for. Sources are decoded once and then served from the cache.
    """
    if not splits or set(splits) - {"train", "val", "test"}:
        raise BudgetnetError(f"splits {splits!r} must name one or more of train, val, test.")
    start = time.perf_counter()
    cache_dir = _cache_dir(cfg)
    source = _open(cfg)
    device = torch.device(device)
    out: dict[str, Split | None] = {"train": None, "val": None, "test": None}
    loads: dict[str, Loaded] = {}

    if "train" in splits or "val" in splits:
        def select(labels: np.ndarray) -> np.ndarray:
            return stratified_subset(labels, cfg.subset, cfg.split_seed)

        loaded = loads["train"] = cached_load(source, "train", cache_dir, cfg.cache,
                                              select if cfg.subset is not None else None)
        if cfg.fold is None:
            train_idx, val_idx = stratified_split(loaded.arrays.y, cfg.val_size, cfg.split_seed)
        else:  # the fold's size replaces val_size
            train_idx, val_idx = stratified_fold(loaded.arrays.y, cfg.fold.k, cfg.fold.of, cfg.split_seed)
        parts = {"train": train_idx, "val": val_idx if cfg.val_size else None}
        for name, idx in parts.items():
            if idx is not None and name in splits:
                out[name] = _to_device(loaded.arrays, idx, device)
        # Statistics always describe the training part, even when only val was asked for.
        train = out["train"] if out["train"] is not None \
            else _to_device(loaded.arrays, train_idx, device)
        mean, std = channel_stats(train.x)
    else:
        mean = std = None
    if "test" in splits:
        loads["test"] = cached_load(source, "test", cache_dir, cfg.cache)
        out["test"] = _to_device(loads["test"].arrays, None, device)

    classes = next(iter(loads.values())).classes

    def per_class(labels: np.ndarray) -> dict[str, int]:
        return dict(zip(classes, np.bincount(labels, minlength=len(classes)).tolist()))

    counts = {name: per_class(part.y.cpu().numpy()) for name, part in out.items()
              if part is not None}
    info = {
        "source": str(source.path),
        "format": source.format,
        "labels": source.label_set,
        "content_hash": source.content_hash,
        "classes": classes,
        "image_size": [source.input_size, source.input_size],
        "counts": counts,
        "source_counts": {name: per_class(ld.arrays.y) for name, ld in loads.items()},
        "cache": {
            "dir": str(cache_dir),
            "used": cfg.cache,
            "paths": {name: str(ld.cache_path) if ld.cache_path else None
                      for name, ld in loads.items()},
            "from_cache": all(ld.from_cache for ld in loads.values()),
        },
        "seconds": round(time.perf_counter() - start, 3),
    }
    return PreparedData(out["train"], out["val"], out["test"], classes, mean, std, info)


@dataclass(frozen=True)
class DataShape:
    """What a model for a dataset must match: its class names and image side."""

    classes: list[str]
    input_size: int


def data_shape(cfg: DataConfig) -> DataShape:
    """The classes and image side of `cfg`'s dataset, read without decoding its images (one
    image header, for a folder's own size)."""
    source = _open(cfg)
    return DataShape(source.classes, source.input_size)


def _cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


def _open(cfg: DataConfig) -> Source:
    if cfg.path is None and not cfg.download:
        raise BudgetnetError("no dataset given; pass --data PATH, or --download to fetch "
                             "CIFAR-10 (--download-cifar100: CIFAR-100).")
    path = cfg.path if cfg.path is not None else _cache_dir(cfg) / "datasets"
    return open_source(path, resize=cfg.resize, input_size=cfg.input_size, labels=cfg.labels,
                       download=cfg.download)


def _to_device(arrays: ImageArrays, idx: np.ndarray | None, device: torch.device) -> Split:
    x, y = (arrays.x, arrays.y) if idx is None else (arrays.x[idx], arrays.y[idx])
    # Copy (a cached memmap is read-only), move as NHWC, permute on the device: the permute is
    # a big strided copy that a GPU does far faster than the host.
    x = torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else np.array(x))
    x = x.to(device).permute(0, 3, 1, 2).contiguous()
    return Split(x, torch.from_numpy(np.asarray(y, np.int64)).to(device))
