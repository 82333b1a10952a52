"""Batched augmentations: shape, dtype, determinism and semantics of each one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from budgetnet.data import AugmentConfig, BatchAugment
from budgetnet.data.augment import (
    AffineConfig,
    ColorJitterConfig,
    CropConfig,
    CutoutConfig,
    ErasingConfig,
    FlipConfig,
    GrayscaleConfig,
    ResizedCropConfig,
    RotationConfig,
    TrivialAugmentConfig,
    _equalize,
)

N = 64


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    # Smooth-ish images in 20..219, so fills of 0/255 and flips are recognisable.
    g = torch.Generator().manual_seed(0)
    base = torch.randint(20, 220, (N, 3, 8, 8), generator=g).float()
    return F.interpolate(base, size=32, mode="bilinear").round().to(torch.uint8)


def _run(cfg: AugmentConfig, x: torch.Tensor, seed: int = 0, **kw) -> torch.Tensor:
    return BatchAugment(cfg)(x, torch.Generator().manual_seed(seed), **kw)


ALL = {
    "resized_crop": ResizedCropConfig(),
    "crop": CropConfig(),
    "flip": FlipConfig(),
    "rotation": RotationConfig(),
    "affine": AffineConfig(degrees=10, shear=(10, 5)),
    "trivial_augment": TrivialAugmentConfig(),
    "color_jitter": ColorJitterConfig(hue=0.1),
    "grayscale": GrayscaleConfig(p=0.5),
    "erasing": ErasingConfig(),
    "cutout": CutoutConfig(),
}


@pytest.mark.parametrize("name", list(ALL))
def test_each_augmentation_is_deterministic(name: str, batch: torch.Tensor) -> None:
    cfg = AugmentConfig(**{name: ALL[name]})
    out = _run(cfg, batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert out.equal(_run(cfg, batch)) and not out.equal(batch)
    assert not out.equal(_run(cfg, batch, seed=1))


def test_everything_together_and_off(batch: torch.Tensor) -> None:
    out = _run(AugmentConfig(**ALL), batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert not BatchAugment(AugmentConfig()).enabled
    assert _run(AugmentConfig(), batch).equal(batch)


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_crop_is_a_window_of_the_padded_image(mode: str, batch: torch.Tensor) -> None:
    p = 3
    out = _run(AugmentConfig(crop=CropConfig(padding=p, padding_mode=mode)), batch)
    padded = F.pad(batch, (p,) * 4, mode="reflect" if mode == "reflect" else "constant")
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1)  # N, C, 2p+1, 2p+1, 32, 32
    match = (windows == out[:, :, None, None]).flatten(4).all(-1).all(1)  # N, 2p+1, 2p+1
    assert match.flatten(1).any(1).all()
    assert len({int(m.flatten().nonzero()[0]) for m in match}) > 10  # offsets vary


def test_random_flip(batch: torch.Tensor) -> None:
    out = _run(AugmentConfig(flip=FlipConfig()), batch)
    flipped = (out == batch.flip(3)).flatten(1).all(1)
    assert ((out == batch).flatten(1).all(1) | flipped).all()
    assert 10 < int(flipped.sum()) < N - 10


def test_alternating_flip_by_index_and_epoch(batch: torch.Tensor) -> None:
    cfg = AugmentConfig(flip=FlipConfig(mode="alternate"))
    index = torch.arange(N) * 7 + 3

    def flipped(epoch: int, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (_run(cfg, x, seed=epoch, epoch=epoch, index=idx) == x.flip(3)).flatten(1).all(1)

    even, odd = flipped(0, index, batch), flipped(1, index, batch)
    assert (even ^ odd).all() and 10 < int(even.sum()) < N - 10
    assert flipped(2, index, batch).equal(even)  # a fixed half, whatever the generator
    perm = torch.randperm(N)  # the choice follows the dataset index, not the batch position
    assert flipped(0, index[perm], batch[perm]).equal(even[perm])


def test_resized_crop_full_box_is_identity(batch: torch.Tensor) -> None:
    cfg = AugmentConfig(resized_crop=ResizedCropConfig(scale=(1, 1), ratio=(1, 1)))
    assert _run(cfg, batch).equal(batch)


def test_identity_geometry(batch: torch.Tensor) -> None:
    still = AffineConfig(degrees=0, translate=(0, 0), scale=(1, 1), shear=(0, 0))
    assert _run(AugmentConfig(rotation=RotationConfig(degrees=0), affine=still), batch) \
        .equal(batch)


def test_affine_translation_and_fill(batch: torch.Tensor) -> None:
    x = batch[:4]
    cfg = AugmentConfig(affine=AffineConfig(translate=(0.25, 0.25), scale=(1, 1), fill=255))
    out = _run(cfg, x)
    assert (out == 255).any()  # the uncovered border gets the fill


def test_grayscale_and_color_jitter(batch: torch.Tensor) -> None:
    gray = _run(AugmentConfig(grayscale=GrayscaleConfig(p=1.0)), batch)
    assert (gray[:, 0] == gray[:, 1]).all() and (gray[:, 1] == gray[:, 2]).all()
    assert _run(AugmentConfig(grayscale=GrayscaleConfig(p=0.0)), batch).equal(batch)
    none = ColorJitterConfig(brightness=0, contrast=0, saturation=0, hue=0)
    assert _run(AugmentConfig(color_jitter=none), batch).equal(batch)
    bright = ColorJitterConfig(brightness=0.5, contrast=0, saturation=0)
    out = _run(AugmentConfig(color_jitter=bright), batch).float()
    ratio = out.flatten(1).sum(1) / batch.float().flatten(1).sum(1)
    assert ((ratio > 0.45) & (ratio < 1.55)).all() and ratio.std() > 0.05


def test_cutout_and_erasing_fill_one_box(batch: torch.Tensor) -> None:
    out = _run(AugmentConfig(cutout=CutoutConfig(size=8, fill=255)), batch)
    filled = (out == 255).all(1)  # N, H, W
    area = filled.flatten(1).sum(1)
    assert ((area >= 16) & (area <= 64)).all()  # clipped at the border, never larger
    rows, cols = filled.any(2), filled.any(1)
    assert (rows.sum(1) * cols.sum(1) == area).all()  # a rectangle
    out = _run(AugmentConfig(erasing=ErasingConfig(p=1.0, fill=0)), batch)
    assert ((out == 0).all(1).flatten(1).sum(1) > 0).all()
    assert _run(AugmentConfig(erasing=ErasingConfig(p=0.0)), batch).equal(batch)


def test_trivial_augment_covers_ops(batch: torch.Tensor) -> None:
    big = batch.repeat(4, 1, 1, 1)
    out = _run(AugmentConfig(trivial_augment=TrivialAugmentConfig()), big)
    changed = (out != big).flatten(1).any(1)
    assert 0.5 < changed.float().mean() < 1.0  # identity and zero magnitudes leave some alone


def test_equalize_matches_pil(batch: torch.Tensor) -> None:
    x = (batch[:8].float() * 0.4 + 30).round()
    ours = _equalize(x).permute(0, 2, 3, 1).numpy()
    pil = np.stack([np.asarray(ImageOps.equalize(Image.fromarray(i))) for i in
                    x.to(torch.uint8).permute(0, 2, 3, 1).numpy()])
    np.testing.assert_array_equal(ours, pil)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        AugmentConfig(crop={"padding": 4, "pading_mode": "reflect"})
    with pytest.raises(ValueError):
        AugmentConfig(flip={"mode": "sometimes"})
    with pytest.raises(ValueError):
        ResizedCropConfig(scale=(1.0, 0.5))
    cfg = AugmentConfig.model_validate({"crop": {}, "flip": {"mode": "alternate"},
                                        "cutout": None})
    assert cfg.crop.padding == 4 and cfg.cutout is None
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(cfg)(torch.zeros(2, 3, 8, 8), torch.Generator())
