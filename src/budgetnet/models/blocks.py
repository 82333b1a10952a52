"""Small composable building blocks (timm-style): every residual block takes
``(in_ch, out_ch, stride, *, kernels, skip_kernel, act)`` so the builder can swap them freely.

All convolutions are bias-free and same-padded (odd kernels, padding k//2): a BatchNorm
follows each of them, which makes a bias redundant.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from budgetnet.models.spec import BOTTLENECK_EXPANSION

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    # In-place is safe everywhere below: activations only ever consume a fresh BN/add output.
    "relu": lambda: nn.ReLU(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "gelu": nn.GELU,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (relu, gelu, silu)."""
    return _ACTIVATIONS[name]()


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free same-padded convolution."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


class ConvBNAct(nn.Sequential):
    """conv -> BN -> activation (the stem)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, act: str = "relu"):
        super().__init__(
            OrderedDict(
                conv=conv(in_ch, out_ch, kernel, stride),
                bn=nn.BatchNorm2d(out_ch),
                act=make_activation(act),
            )
        )


def shortcut(in_ch: int, out_ch: int, stride: int, kernel: int, norm: bool = True) -> nn.Module:
    """Identity where the shape is kept, else a projection conv (+ BN unless pre-activated)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv=conv(in_ch, out_ch, kernel, stride))
    if norm:
        layers["bn"] = nn.BatchNorm2d(out_ch)
    return nn.Sequential(layers)


class BasicBlock(nn.Module):
    """conv-BN-act-conv-BN, plus shortcut, then act (He et al. 2015)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        *,
        kernels: Sequence[int] = (3, 3),
        skip_kernel: int = 1,
        act: str = "relu",
    ):
        super().__init__()
        k1, k2 = kernels
        self.conv1 = conv(in_ch, out_ch, k1, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act1 = make_activation(act)
        self.conv2 = conv(out_ch, out_ch, k2)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = shortcut(in_ch, out_ch, stride, skip_kernel)
        self.act2 = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class BottleneckBlock(nn.Module):
    """1x1 reduce -> kxk (carries the stride) -> 1x1 expand, plus shortcut, then act."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        *,
        kernels: Sequence[int] = (3,),
        skip_kernel: int = 1,
        act: str = "relu",
    ):
        super().__init__()
        (k,) = kernels
        mid = out_ch // BOTTLENECK_EXPANSION
        self.conv1 = conv(in_ch, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = make_activation(act)
        self.conv2 = conv(mid, mid, k, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act2 = make_activation(act)
        self.conv3 = conv(mid, out_ch, 1)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = shortcut(in_ch, out_ch, stride, skip_kernel)
        self.act3 = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-act-conv-BN-act-conv plus shortcut, no activation after the add (He et al. 2016).

    The projection sees the already normalized input, so it is a bare conv (no BN).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        *,
        kernels: Sequence[int] = (3, 3),
        skip_kernel: int = 1,
        act: str = "relu",
    ):
        super().__init__()
        k1, k2 = kernels
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.act1 = make_activation(act)
        self.conv1 = conv(in_ch, out_ch, k1, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = make_activation(act)
        self.conv2 = conv(out_ch, out_ch, k2)
        self.shortcut = shortcut(in_ch, out_ch, stride, skip_kernel, norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        skip = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + skip


class PlainBlock(nn.Sequential):
    """conv -> BN -> act with no skip: airbench's second conv of a stage. Dirac-initialized
    (`conv_init: dirac`) it starts as the identity, which stands in for the skip."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        *,
        kernels: Sequence[int] = (3,),
        skip_kernel: int = 1,
        act: str = "relu",
    ):
        (k,) = kernels
        super().__init__(
            OrderedDict(conv=conv(in_ch, out_ch, k, stride), bn=nn.BatchNorm2d(out_ch), act=make_activation(act))
        )


BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": BottleneckBlock,
    "preact": PreActBlock,
    "plain": PlainBlock,
}


class WhiteningStem(nn.Module):
    """A frozen patch-whitening conv (Jordan's airbench, after Page's ResNet-9 speed runs):
    a k x k unpadded conv whose filters are the eigenvectors of the training images' k x k
    patch covariance, scaled by 1/sqrt(eigenvalue + eps), with both signs, then the
    activation. Decorrelated inputs are what lets the layers after it take large steps from
    the first batch; the weights stay frozen and only the bias trains (briefly)."""

    def __init__(self, in_ch: int, kernel: int, eps: float, act: str = "gelu"):
        super().__init__()
        self.eps = eps
        self.conv = nn.Conv2d(in_ch, 2 * in_ch * kernel * kernel, kernel, padding=0, bias=True)
        self.conv.weight.requires_grad_(False)
        self.act = make_activation(act)

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor) -> None:
        """Set the filters from normalized NCHW float `images` (a few thousand are plenty),
        with `eps` added to every eigenvalue before its 1/sqrt."""
        c, k = self.conv.in_channels, self.conv.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        filters = (eigenvectors.T / (eigenvalues + self.eps).sqrt()[:, None]).flip(0).view(c * k * k, c, k, k)
        self.conv.weight.copy_(torch.cat((filters, -filters)).to(self.conv.weight.dtype))
        self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class SqueezeExcite(nn.Module):
    """Squeeze-excitation (Hu et al. 2018): per image, rescale each channel by a gate computed
    from all channels' means. Its two 1x1 convs act on a 1x1 map, so they cost ~2 * C * hidden
    FLOPs an image: a reweighting that is nearly free where the budget counts FLOPs rather
    than seconds. The gate is 2 * sigmoid, so a zero excitation passes the input through at
    its scale, as dirac-initialized layers do."""

    def __init__(self, channels: int, hidden: int, act: str = "relu"):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=False)
        self.act = make_activation(act)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(self.act(self.reduce(self.pool(x))))
        return x * (2.0 * torch.sigmoid(gate))


class MaxBlurPool(nn.Module):
    """Anti-aliased max-pooling (Zhang 2019, "Making convolutional networks shift-invariant
    again"): the max over each `pool` x `pool` window at stride 1, then a fixed binomial blur
    subsampled at stride `pool`. Same output size as MaxPool2d(pool). The blur is a depthwise
    3x3 conv on the pooled map, ~0.2% of speedrun_2m's FLOPs; the seconds are another matter:
    the stride-1 max touches 4x the elements, and on an AVX2 CPU in fp32 the three pools of
    speedrun_2m took 2.5x as long as 2x2 max-pools, forward + backward (benchmarks/pool_kernels.py).
    Whole default runs took 2.5-3x as long on an AMX CPU in bf16; on that AVX2 CPU the 1,000-image
    step's cost stayed within the host's run-to-run noise (benchmarks/throughput.py)."""

    def __init__(self, channels: int, pool: int):
        super().__init__()
        self.window = nn.MaxPool2d(pool, stride=1)
        self.stride = pool
        taps = torch.tensor([1.0, 2.0, 1.0])
        blur = (taps[:, None] * taps[None, :] / 16).expand(channels, 1, 3, 3).contiguous()
        self.register_buffer("blur", blur, persistent=False)  # fixed: neither trained nor saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.window(x)
        return nn.functional.conv2d(x, self.blur.to(x.dtype), stride=self.stride, padding=1, groups=x.shape[1])


class ConvPoolStage(nn.Module):
    """ResNet-9 / airbench stage: conv 3x3 -> MaxPool2d(pool) -> BN -> act -> residual blocks.

    Pooling before BN and the activation is on purpose: with a 2x2 pool they then touch 4x
    fewer elements, which matters on CPU.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        pool: int,
        depth: int,
        block: Callable[[int, int, int], nn.Module],
        act: str = "relu",
        blur: bool = False,
    ):
        super().__init__()
        self.conv = conv(in_ch, out_ch, 3)
        # ~12% of speedrun_2m's bf16 step on an AVX512-BF16 CPU, yet the fastest 2x2 max-pool
        # measured: 4.4-10x faster forward + backward than reshape + amax or a maximum of the
        # four strided phases on an AVX2 CPU in fp32 (benchmarks/pool_kernels.py).
        self.pool: nn.Module = nn.Identity()
        if pool > 1:
            self.pool = MaxBlurPool(out_ch, pool) if blur else nn.MaxPool2d(pool)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = make_activation(act)
        self.blocks = nn.Sequential(*(block(out_ch, out_ch, 1) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.act(self.bn(self.pool(self.conv(x)))))
