"""Batches straight from uint8 tensors already on the training device.

No worker processes, no per-sample Python: each batch is one index_select, the batched
augmentation, and the uint8 -> float conversion with normalization folded into one scale and
one shift. Nothing in the loop reads a value back to the host, so on a GPU the whole epoch
queues asynchronously. Augmenting per batch measured as fast as augmenting the whole epoch in
one call (19.8 vs 19.5 ms per 2,048 images for crop+flip+cutout on CPU), without holding a
second augmented copy of the dataset.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from budgetnet.data.augment import BatchAugment

Tensor = torch.Tensor


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of uint8 NCHW images, in [0, 1] units.

    From per-channel 256-bin histograms: exact, and 4x faster on CPU than float sums over the
    non-contiguous (N, H, W) dims (0.3 s against 1.2 s for 45,000 CIFAR images).
    """
    if x.dtype != torch.uint8 or x.ndim != 4 or len(x) == 0:
        raise ValueError(f"expected a non-empty uint8 NCHW tensor, got {x.dtype} {tuple(x.shape)}")
    hist = torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256)
                        for c in range(x.shape[1])]).double()
    values = torch.arange(256, dtype=torch.float64, device=x.device) / 255
    count = hist.sum(1)
    mean = (hist * values).sum(1) / count
    std = ((hist * values**2).sum(1) / count - mean**2).clamp(min=0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """The generator seed of epoch `epoch`: a pure function of (seed, epoch); `stream` > 0 gives
    other uses of the epoch (the data selection's draw) generators of their own."""
    key = [seed, epoch, stream] if stream else [seed, epoch]
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1)


class DeviceLoader:
    """Iterates (x, y) batches of uint8 NCHW images `x` and int64 labels `y` on one device.

    Output x is `dtype`, normalized as (x/255 - mean) / std (or just x/255 without mean/std),
    optionally augmented and channels_last. The shuffle and augmentation of epoch `e` depend
    only on (seed, e): `loader.epoch(e)` replays epoch e exactly, e.g. after a resume. Iterating
    the loader itself runs epochs 0, 1, 2, ... (`set_epoch` moves that counter).

    `shard=(rank, ranks)` is for data-parallel training: every rank draws the same batches
    (augmented whole, so each image gets what it would get in one process) and yields its
    `rank`-th of `ranks` equal parts of each, so together the ranks train on this loader's
    batches without it. The length stays the number of whole batches.

    `set_epoch(e, subset)` / `epoch(e, subset)` draw the epoch's batches from the images
    `subset` only (a shuffled loader's data selection): each once in a random order, then again
    in a fresh one, until the epoch's usual number of batches is filled. `with_index` yields
    (x, y, index) triples, `index` being the positions in `x` of the batch's images.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: BatchAugment | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        with_index: bool = False,
    ) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"x must be uint8 NCHW, got {x.dtype} {tuple(x.shape)}")
        if len(x) != len(y) or y.device != x.device:
            raise ValueError("x and y must have the same length and device")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point type, got {dtype}")
        rank, ranks = shard
        if not 0 <= rank < ranks or batch_size % ranks or (ranks > 1 and not drop_last):
            raise ValueError(f"shard {shard} must be (rank, ranks) splitting every batch of {batch_size} evenly "
                             "(with drop_last)")
        self.x, self.y = x, y
        self.part = slice(rank * batch_size // ranks, (rank + 1) * batch_size // ranks) if ranks > 1 else None
        self.batch_size = batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.augment = augment if augment is not None and augment.enabled else None
        self.dtype = dtype
        self.channels_last = channels_last
        self.with_index = with_index
        c = x.shape[1]
        mean_t = torch.tensor(mean if mean is not None else [0.0] * c, dtype=torch.float64)
        std_t = torch.tensor(std if std is not None else [1.0] * c, dtype=torch.float64)
        if mean_t.shape != (c,) or std_t.shape != (c,) or bool((std_t <= 0).any()):
            raise ValueError(f"mean and std need {c} values each, std positive")
        # (x/255 - mean)/std == x * scale + bias: /255 and the statistics fold into two constants.
        self._scale = (1 / (255 * std_t)).to(x.device, dtype).view(1, c, 1, 1)
        self._bias = (-mean_t / std_t).to(x.device, dtype).view(1, c, 1, 1)
        self._next_epoch = 0
        self._next_subset: Tensor | None = None

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int, subset: Tensor | None = None) -> None:
        """Make the next plain iteration run epoch `epoch` (on the images `subset` only)."""
        self._next_epoch, self._next_subset = epoch, subset

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        epoch, subset = self._next_epoch, self._next_subset
        self._next_epoch, self._next_subset = epoch + 1, None
        return self.epoch(epoch, subset)

    def epoch(self, epoch: int, subset: Tensor | None = None) -> Iterator[tuple[Tensor, ...]]:
        """The batches of epoch `epoch` (drawn from the images `subset` only)."""
        device = self.x.device
        generator = torch.Generator(device=device)
        generator.manual_seed(epoch_seed(self.seed, epoch))
        bs = self.batch_size
        if subset is not None:
            if not self.shuffle or len(subset) == 0:
                raise ValueError("a subset epoch needs a shuffled loader and at least one image")
            need = len(self) * bs if self.drop_last else len(self.x)
            order: Tensor | None = torch.cat([
                subset[torch.randperm(len(subset), generator=generator, device=device)]
                for _ in range(-(-need // len(subset)))
            ])[:need]
        else:
            order = torch.randperm(len(self.x), generator=generator, device=device) if self.shuffle else None
        for b in range(len(self)):
            if order is None:
                x, y = self.x[b * bs:(b + 1) * bs], self.y[b * bs:(b + 1) * bs]
                index = torch.arange(b * bs, b * bs + len(x), device=device) \
                    if self.augment or self.with_index else None
            else:
                index = order[b * bs:(b + 1) * bs]
                x, y = self.x.index_select(0, index), self.y.index_select(0, index)
            if self.augment:
                x = self.augment(x, generator, epoch, index)
            if self.part is not None:
                x, y = x[self.part], y[self.part]
                index = index[self.part] if index is not None else None
            if self.with_index:
                yield self._normalize(x), y, index
            else:
                yield self._normalize(x), y

    def _normalize(self, x: Tensor) -> Tensor:
        # Convert, then scale and shift in place: on CPU this measured 1.4 ms per 512x3x32x32
        # batch against 2.4-3.2 ms for one addcmul (broadcast multiply-adds vectorize poorly),
        # and going channels_last on the float result 0.6 ms against 6 ms on the uint8 input.
        x = x.to(self.dtype).mul_(self._scale).add_(self._bias)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
