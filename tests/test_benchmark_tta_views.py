"""The TTA-views benchmark scores the recipe's 6 views exactly as evaluation computes them, so
its comparison of view sets is against what the product ships."""

from __future__ import annotations

import torch
from conftest import load_benchmark
from torch import nn

from budgetnet.evaluate import predict_logits, shift

tta_views = load_benchmark("tta_views")


def test_the_recipes_view_set_is_evaluations_tta() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5)).eval()
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        weights = tta_views.VIEW_SETS["the recipe's 6 views"]
        ours = sum(w * model(shift(x.flip(-1) if f else x, dy, dx)) for (f, dy, dx), w in weights.items())
        torch.testing.assert_close(ours, predict_logits(model, x, tta=True))
    assert sum(weights.values()) == 1 and len(tta_views.VIEWS) == 26 == len(set(tta_views.VIEWS))


def test_a_shift_reflects_as_far_as_it_moves() -> None:
    """Shifts of up to two pixels: each output pixel is the input's at the moved place, the
    border mirrored about the edge pixel (reflect padding), whatever the shift's size."""
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    mirror = [2, 1, 0, 1, 2, 3, 4, 5, 4, 3]  # index of padded position p - 2 in a 6-pixel row, reflected
    for dy, dx in ((1, 1), (-1, -1), (2, -1), (0, -2)):
        rows, cols = [mirror[i - dy + 2] for i in range(6)], [mirror[j - dx + 2] for j in range(6)]
        assert torch.equal(shift(x, dy, dx), x[:, :, rows][:, :, :, cols]), (dy, dx)
