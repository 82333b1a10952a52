"""The pooling formulations the pool benchmark times compute the same 2x2 max-pool, so its
timings compare like with like."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import load_benchmark

pool_kernels = load_benchmark("pool_kernels")


@pytest.mark.parametrize("name", sorted(pool_kernels.KERNELS))
def test_every_kernel_is_a_2x2_max_pool_in_channels_last(name: str) -> None:
    x = torch.randn(3, 5, 8, 6).to(memory_format=torch.channels_last)
    out = pool_kernels.KERNELS[name](x)
    assert torch.equal(out, F.max_pool2d(x, 2))
    assert pool_kernels.fwd_bwd_ms(pool_kernels.KERNELS[name], x, repeats=1) > 0


def test_the_benchmark_prints_the_anti_aliased_pool_beside_the_kernels(monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.argv", ["pool_kernels.py", "--batch", "2", "--repeats", "1"])
    pool_kernels.main()
    out = capsys.readouterr().out
    assert out.count("anti-aliased (pool_blur): max at stride 1") == 3 and "MaxBlurPool" in out


def test_the_timed_backward_gets_a_dense_channels_last_gradient() -> None:
    # As the next layer's backward hands it in the step; `.sum()`'s expanded ones (all strides 0)
    # took a slower max_pool2d backward path and inflated the pool's timings.
    seen: list[torch.Tensor] = []

    def pool(t: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(t, 2)
        if out.requires_grad:
            out.register_hook(seen.append)
        return out

    x = torch.randn(3, 5, 8, 6).to(memory_format=torch.channels_last)
    pool_kernels.fwd_bwd_ms(pool, x, repeats=1)
    assert seen and all(0 not in g.stride() and g.is_contiguous(memory_format=torch.channels_last) for g in seen)
