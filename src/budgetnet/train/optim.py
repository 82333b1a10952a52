"""Optimizers the seeds used, plus Muon, with parameter groups for weight-decay exemption
and per-group lr.

Fast CIFAR recipes (Page's ResNet-9, airbench) give BatchNorm and bias parameters their own
group: no weight decay (decaying a BN scale only fights the next layer's weights) and often a
different learning rate. `no_decay_bn_bias` and `bn_bias_lr_scale` expose both.

`muon` is the optimizer of the fastest public CIFAR-10 speed runs (airbench94 with Muon):
`FilterMuon` (torch.optim.Muon's iteration, for 4-D filters and fp32 on CPUs) orthogonalizes the
momentum of every convolution filter bank, viewed as an (out, in*kh*kw) matrix, while momentum
SGD (Nesterov if asked) trains the rest (BN shifts, biases, the head).
Every parameter group carries `peak_lr`; the loop sets `lr = peak_lr * schedule factor`.
Each optimizer's config holds only the settings it uses (`OptimConfig` is a union tagged by
`name`, train/tagged.py).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from budgetnet.train.tagged import kinds, tagged_union


class _Optimizer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    lr: float = Field(0.1, gt=0, description="peak learning rate")
    weight_decay: float = Field(5e-4, ge=0)
    bn_bias_lr_scale: float = Field(1.0, gt=0, description="lr multiplier for BN and bias params")


class _Grouped(_Optimizer):
    """A torch optimizer over two groups: weights, and BN/bias parameters."""

    no_decay_bn_bias: bool = False


class SGDConfig(_Grouped):
    name: Literal["sgd"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False


class AdamConfig(_Grouped):
    name: Literal["adam", "adamw", "adamax"] = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)


class AdagradConfig(_Grouped):
    name: Literal["adagrad", "adadelta"] = "adagrad"
    eps: float = Field(1e-8, gt=0)


class RMSpropConfig(_Grouped):
    name: Literal["rmsprop"] = "rmsprop"
    momentum: float = Field(0.9, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)


class ASGDConfig(_Grouped):
    name: Literal["asgd"] = "asgd"


class MuonConfig(_Optimizer):
    """Muon on the convolution filters, Nesterov-able SGD (`lr`, `momentum`) on the rest."""

    name: Literal["muon"] = "muon"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    head_lr_scale: float = Field(1.0, gt=0, description="lr multiplier for the Linear head's weight")
    stem_bias_fraction: float = Field(
        1.0, gt=0, le=1, description="a whitening stem's bias trains over this fraction of the run, then stops"
    )
    muon_lr: float = Field(0.24, gt=0, description="peak lr of the convolution filters")
    muon_momentum: float = Field(0.6, ge=0, lt=1, description="momentum of the convolution filters")
    # airbench94_muon and later CIFAR-10 records run 3 iterations: a rougher U V^T whose small
    # singular values stay smaller; torch.optim.Muon runs 5.
    muon_ns_steps: int = Field(5, ge=1, le=10, description="Newton-Schulz iterations per filter update")


# The section's fields when one model held every optimizer's settings, at first; Muon's four
# came later.
_ONE_MODEL_FIRST = frozenset({
    "name", "lr", "momentum", "nesterov", "weight_decay", "no_decay_bn_bias", "bn_bias_lr_scale", "betas", "eps",
})

OptimConfig = tagged_union(
    SGDConfig, AdamConfig, AdagradConfig, RMSpropConfig, ASGDConfig, MuonConfig,
    noun="optimizer", default="sgd",
    legacy=(_ONE_MODEL_FIRST, _ONE_MODEL_FIRST | {"head_lr_scale", "stem_bias_fraction", "muon_lr", "muon_momentum"}),
)
"""Optimizer section of a run config: one of the optimizers above, by `name`."""

OPTIMIZER_NAMES = tuple(kinds(OptimConfig))


class LookaheadConfig(BaseModel):
    """Lookahead (Zhang et al. 2019) around the optimizer: every `steps` steps the weights move
    `alpha` of the way from where they stood `steps` steps before to where the optimizer took
    them, and training continues from there."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(5, ge=1, description="fast steps between two syncs of the slow weights")
    alpha: float = Field(0.5, gt=0, le=1, description="fraction of the way the slow weights move at a sync")


def _param_groups(model: nn.Module, cfg: _Grouped) -> list[dict[str, Any]]:
    # 1-d tensors are BN scales/shifts and biases; everything >1-d is a conv or linear weight.
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    others = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": weights, "weight_decay": cfg.weight_decay, "lr": cfg.lr}]
    if others:
        groups.append(
            {
                "params": others,
                "weight_decay": 0.0 if cfg.no_decay_bn_bias else cfg.weight_decay,
                "lr": cfg.lr * cfg.bn_bias_lr_scale,
            }
        )
    return groups


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, lookahead: LookaheadConfig | None = None
) -> TrainOptimizer:
    """The optimizer named by `cfg`, over `model`'s trainable parameters, in a `Lookahead` if one
    is given. Every group gets `peak_lr` (its lr at schedule factor 1) and `horizon` (the
    fraction of the run it trains)."""
    optimizer = _build(model, cfg)
    for group in optimizer.param_groups:
        group.setdefault("peak_lr", group["lr"])
        group.setdefault("horizon", 1.0)
    return optimizer if lookahead is None else Lookahead(optimizer, lookahead)


def _build(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer | MuonSGD:
    if isinstance(cfg, MuonConfig):
        return MuonSGD(model, cfg)
    groups = _param_groups(model, cfg)
    if isinstance(cfg, SGDConfig):
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if isinstance(cfg, AdamConfig):
        adam = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}[cfg.name]
        return adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if isinstance(cfg, AdagradConfig):
        adagrad = {"adagrad": torch.optim.Adagrad, "adadelta": torch.optim.Adadelta}[cfg.name]
        return adagrad(groups, lr=cfg.lr, eps=cfg.eps)
    if isinstance(cfg, RMSpropConfig):
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps)
    return torch.optim.ASGD(groups, lr=cfg.lr)


def _owner_params(model: nn.Module) -> tuple[set[int], set[int]]:
    """ids of the head's weight and of a whitening stem's bias: the groups that fast recipes
    give their own lr (the head's; a stem bias that stops training early)."""
    head = getattr(model, "fc", None)
    stem = getattr(getattr(model, "stem", None), "conv", None)
    heads = {id(head.weight)} if isinstance(head, nn.Linear) else set()
    is_whiten = stem is not None and not stem.weight.requires_grad and stem.bias is not None
    return heads, ({id(stem.bias)} if is_whiten else set())


def _orthogonalize(update: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (Jordan et al.; the coefficients of
    torch.optim.Muon): roughly U V^T of the update's SVD, on an (out, fan_in) matrix."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = update.T if update.size(0) > update.size(1) else update
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if update.size(0) > update.size(1) else x


class FilterMuon(torch.optim.Optimizer):
    """Muon over convolution filter banks, each viewed as an (out, in*kh*kw) matrix.

    Hand-written rather than torch.optim.Muon for two measured reasons: torch's accepts only
    2-D parameters, and it runs the Newton-Schulz iteration in bf16, which CPUs without native
    bf16 emulate: 1.56 s per 256x2304 filter bank on an AVX2-only EPYC against 0.029 s here in
    fp32 (bf16 is kept where it is native: CUDA). As airbench does, each filter bank is
    renormalized to norm sqrt(out) before its step: the orthogonalized update has a fixed
    scale whatever the weights' norm, so without it the effective step size drifts.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float, nesterov: bool = True,
                 ns_steps: int = 5) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps})

    def __setstate__(self, state: dict[str, Any]) -> None:
        # As torch's own optimizers do for settings added later: a checkpoint from before
        # ns_steps existed loads with the configured count.
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("ns_steps", self.defaults["ns_steps"])

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.reshape(len(p), -1)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(grad))
                buf.mul_(group["momentum"]).add_(grad)
                update = grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                dtype = torch.bfloat16 if p.device.type == "cuda" else torch.float32
                p.mul_(len(p) ** 0.5 / p.norm().clamp(min=1e-12))
                p.add_(_orthogonalize(update.to(dtype), group["ns_steps"]).view_as(p).to(p.dtype), alpha=-group["lr"])


class MuonSGD:
    """`FilterMuon` for the convolution filters, SGD (`momentum`, `nesterov`) for the rest (BN
    shifts, biases, the head), stepped together as one optimizer. Weight decay follows
    airbench: `weight_decay` is what each SGD-trained parameter loses per step at the peak lr,
    whatever its group's lr; the filters get none (their norm is pinned)."""

    def __init__(self, model: nn.Module, cfg: MuonConfig) -> None:
        heads, stem_biases = _owner_params(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        filters = [p for p in trainable if p.ndim == 4]
        groups = []
        for params, scale, horizon in (
            ([p for p in trainable if p.ndim < 4 and id(p) not in heads | stem_biases], cfg.bn_bias_lr_scale, 1.0),
            ([p for p in trainable if id(p) in heads], cfg.head_lr_scale, 1.0),
            ([p for p in trainable if id(p) in stem_biases], cfg.bn_bias_lr_scale, cfg.stem_bias_fraction),
        ):
            if params:
                lr = cfg.lr * scale
                groups.append({"params": params, "lr": lr, "weight_decay": cfg.weight_decay / lr, "horizon": horizon})
        parts: list[torch.optim.Optimizer] = []
        if groups:
            parts.append(torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.nesterov and cfg.momentum > 0))
        if filters:
            parts.append(FilterMuon(filters, lr=cfg.muon_lr, momentum=cfg.muon_momentum, ns_steps=cfg.muon_ns_steps))
        self.parts = parts
        self.param_groups: list[dict[str, Any]] = [g for o in parts for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.parts:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [o.state_dict() for o in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for o, part in zip(self.parts, state["parts"], strict=True):
            o.load_state_dict(part)
        self.param_groups[:] = [g for o in self.parts for g in o.param_groups]


class Lookahead:
    """`LookaheadConfig` around an optimizer, stepped and checkpointed as one. The slow weights
    are taken at the first step, so that initializations made after the optimizer is built (a
    whitening stem's) are in them."""

    def __init__(self, inner: torch.optim.Optimizer | MuonSGD, cfg: LookaheadConfig) -> None:
        self.inner, self.cfg = inner, cfg
        self.steps = 0
        self.slow: list[torch.Tensor] | None = None

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.inner.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        if self.slow is None:
            self.slow = [p.detach().clone() for p in self._params()]
        self.inner.step()
        self.steps += 1
        if self.steps % self.cfg.steps == 0:
            for slow, fast in zip(self.slow, self._params(), strict=True):
                slow.lerp_(fast, self.cfg.alpha)
                fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "steps": self.steps, "slow": self.slow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.steps = state["steps"]
        self.slow = (None if state["slow"] is None else
                     [s.to(p.device, p.dtype, copy=True) for s, p in zip(state["slow"], self._params(), strict=True)])


TrainOptimizer = torch.optim.Optimizer | MuonSGD | Lookahead
"""What `build_optimizer` returns: each steps, zeroes and checkpoints the same way."""
