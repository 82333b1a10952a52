"""DeviceLoader: coverage, determinism per (seed, epoch), normalization, formats; statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from budgetnet.data import AugmentConfig, BatchAugment, DeviceLoader, channel_stats
from budgetnet.data.augment import CropConfig, CutoutConfig, FlipConfig

N = 50


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (N, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(N)


def _augment() -> BatchAugment:
    return BatchAugment(AugmentConfig(crop=CropConfig(padding=2), flip=FlipConfig(),
                                      cutout=CutoutConfig(size=3)))


def _epoch(loader: DeviceLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.epoch(epoch))


def test_eval_order_and_last_batch(data) -> None:
    x, y = data
    loader = DeviceLoader(x, y, 16)
    batches = list(loader)
    assert len(loader) == len(batches) == 4 and [len(b[1]) for b in batches] == [16, 16, 16, 2]
    assert torch.cat([b[1] for b in batches]).equal(y)
    assert torch.allclose(torch.cat([b[0] for b in batches]), x.float() / 255)


def test_shuffle_covers_each_sample_once(data) -> None:
    loader = DeviceLoader(*data, 16, shuffle=True, drop_last=True, seed=3)
    assert len(loader) == 3
    seen = torch.cat([b[1] for b in _epoch(loader, 0)])
    assert len(seen) == 48 and len(seen.unique()) == 48
    full = torch.cat([b[1] for b in _epoch(DeviceLoader(*data, 16, shuffle=True), 0)])
    assert sorted(full.tolist()) == list(range(N)) and not full.equal(data[1])


def test_epoch_is_a_pure_function_of_seed_and_epoch(data) -> None:
    def make(seed: int = 7) -> DeviceLoader:
        return DeviceLoader(*data, 16, shuffle=True, seed=seed, augment=_augment())

    a, b = make(), make()
    for e in (0, 5):
        for (xa, ya), (xb, yb) in zip(_epoch(a, e), _epoch(b, e), strict=True):
            assert xa.equal(xb) and ya.equal(yb)
    first = _epoch(a, 0)
    assert not first[0][1].equal(_epoch(a, 1)[0][1])
    assert not first[0][1].equal(_epoch(make(seed=8), 0)[0][1])
    # Plain iteration runs epochs 0, 1, ...; set_epoch resumes anywhere.
    resumed = make()
    resumed.set_epoch(5)
    for (xa, _), (xb, _) in zip(resumed, _epoch(a, 5), strict=True):
        assert xa.equal(xb)
    fresh = make()
    list(fresh)
    assert next(iter(fresh))[1].equal(_epoch(a, 1)[0][1])


def test_augment_gets_dataset_indices(data) -> None:
    alternate = BatchAugment(AugmentConfig(flip=FlipConfig(mode="alternate")))
    loader = DeviceLoader(*data, 16, shuffle=True, augment=alternate)
    for e in (0, 1):
        for xb, yb in loader.epoch(e):
            # The alternating flip depends on the image (its index), not the batch position.
            plain = data[0][yb].float() / 255
            flipped = torch.isclose(xb, plain.flip(3)).flatten(1).all(1)
            expected = alternate(data[0][yb], torch.Generator(), e, yb)
            assert flipped.equal((expected == data[0][yb].flip(3)).flatten(1).all(1))


def test_shards_are_equal_parts_of_the_same_batches(data) -> None:
    """Data-parallel ranks: each yields its part of every batch, augmented as in one process."""
    def make(shard: tuple[int, int] = (0, 1)) -> DeviceLoader:
        return DeviceLoader(*data, 16, shuffle=True, drop_last=True, seed=4, augment=_augment(), shard=shard)

    whole, parts = make(), [make((rank, 4)) for rank in range(4)]
    assert all(len(part) == len(whole) == 3 for part in parts)
    for e in (0, 3):
        for (xw, yw), *pieces in zip(_epoch(whole, e), *(_epoch(part, e) for part in parts), strict=True):
            assert all(len(yp) == 4 for _, yp in pieces)
            assert torch.cat([xp for xp, _ in pieces]).equal(xw) and torch.cat([yp for _, yp in pieces]).equal(yw)
    for shard, drop_last in (((0, 3), True), ((2, 2), True), ((0, 2), False)):
        with pytest.raises(ValueError, match="shard"):
            DeviceLoader(*data, 16, drop_last=drop_last, shard=shard)


def test_normalization_dtype_channels_last(data) -> None:
    x, y = data
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loader = DeviceLoader(x, y, 64, mean=mean, std=std, dtype=torch.bfloat16,
                          channels_last=True)
    (xb, yb), = list(loader)
    assert xb.dtype == torch.bfloat16 and xb.is_contiguous(memory_format=torch.channels_last)
    expected = (x.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1).double()) \
        / torch.tensor(std).view(1, 3, 1, 1).double()
    assert torch.allclose(xb.double(), expected, atol=0.05)
    f32, = list(DeviceLoader(x, y, 64, mean=mean, std=std))
    assert torch.allclose(f32[0].double(), expected, atol=1e-5)


def test_bad_arguments(data) -> None:
    x, y = data
    with pytest.raises(ValueError):
        DeviceLoader(x.float(), y, 4)
    with pytest.raises(ValueError):
        DeviceLoader(x, y[:3], 4)
    with pytest.raises(ValueError):
        DeviceLoader(x, y, 4, std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError):
        DeviceLoader(x, y, 4, dtype=torch.int32)


def test_channel_stats(data) -> None:
    x = data[0]
    mean, std = channel_stats(x)
    ref = x.permute(0, 2, 3, 1).reshape(-1, 3).numpy() / 255
    np.testing.assert_allclose(mean, ref.mean(0), atol=1e-12)
    np.testing.assert_allclose(std, ref.std(0), atol=1e-12)
