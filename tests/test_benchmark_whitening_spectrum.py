"""The whitening-spectrum benchmark reads back exactly the eigenvalues the stem was set from."""

from __future__ import annotations

import torch
from conftest import load_benchmark

from budgetnet.models.blocks import WhiteningStem

whitening_spectrum = load_benchmark("whitening_spectrum")


def test_the_eigenvalues_come_back_from_the_filters() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(32, 3, 10, 10, generator=g)
    images = torch.cat((base[:, :2], base[:, 1:2] + 0.01 * base[:, 2:]), dim=1)  # one faint colour direction
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
    expected = torch.linalg.eigvalsh(patches.T @ patches / len(patches)).flip(0)
    for eps in (5e-4, 5e-3):
        stem = WhiteningStem(3, 2, eps=eps)
        stem.init_whitening(images)
        got = whitening_spectrum.eigenvalues(stem)
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-6)
    assert expected[-1] < 1e-4  # the faint direction is there, and read back
