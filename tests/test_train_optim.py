"""Every optimizer and learning-rate schedule a run config can name builds and steps; parameter
groups exempt BN/bias from weight decay; early stopping counts epochs as documented."""

from __future__ import annotations

import math
import typing
import warnings

import pytest
import torch
from torch import nn

from budgetnet.train.callbacks import EarlyStopping, EarlyStoppingConfig
from budgetnet.train.optim import OptimConfig, OptimizerName, build_optimizer
from budgetnet.train.schedules import ScheduleConfig, ScheduleName, build_scheduler

OPTIMIZERS = list(typing.get_args(OptimizerName))
SCHEDULES = list(typing.get_args(ScheduleName))
STEPS_PER_EPOCH, EPOCHS = 4, 3
TOTAL = STEPS_PER_EPOCH * EPOCHS


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def loss_of(model: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    return nn.functional.cross_entropy(model(x), y)


def test_names_cover_the_cli_help() -> None:
    assert OPTIMIZERS == ["sgd", "adam", "adamw", "adamax", "adagrad", "rmsprop", "adadelta", "asgd"]
    assert SCHEDULES == ["constant", "step", "cosine", "cosine_restarts", "plateau", "cyclic", "onecycle", "linear"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_lowers_the_loss(name: str) -> None:
    model = tiny_net()
    lr = 1.0 if name == "adadelta" else 0.05  # adadelta's lr scales an already unit-free step
    opt = build_optimizer(model, OptimConfig(name=name, lr=lr, weight_decay=1e-4))
    assert type(opt).__name__.lower() == name
    before = [p.detach().clone() for p in model.parameters()]
    first = loss_of(model).item()
    for _ in range(5):
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()
    assert all(math.isfinite(g["lr"]) and g["lr"] > 0 for g in opt.param_groups)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert loss_of(model).item() < first


def test_param_groups_exempt_bn_and_bias_from_weight_decay() -> None:
    model = tiny_net()
    cfg = OptimConfig(lr=0.1, weight_decay=5e-4, no_decay_bn_bias=True, bn_bias_lr_scale=2.0)
    weights, others = build_optimizer(model, cfg).param_groups
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in others["params"])
    assert len(others["params"]) == 3  # BN weight and bias, Linear bias
    assert (weights["weight_decay"], others["weight_decay"]) == (5e-4, 0.0)
    assert (weights["lr"], others["lr"]) == (0.1, 0.2)
    # Every trainable parameter in exactly one group.
    grouped = [id(p) for g in (weights, others) for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters()) and len(set(grouped)) == len(grouped)

    decayed = build_optimizer(model, OptimConfig(weight_decay=5e-4)).param_groups
    assert [g["weight_decay"] for g in decayed] == [5e-4, 5e-4]


def test_nesterov_needs_momentum() -> None:
    opt = build_optimizer(tiny_net(), OptimConfig(name="sgd", nesterov=True, momentum=0.0))
    assert opt.defaults["nesterov"] is False
    opt = build_optimizer(tiny_net(), OptimConfig(name="sgd", nesterov=True, momentum=0.9))
    assert opt.defaults["nesterov"] is True


def lr_trace(cfg: ScheduleConfig, lr: float = 0.1, lr_scale: float = 1.0) -> list[list[float]]:
    """Per-group lr before each step of a whole run (plateau: metrics that never improve)."""
    model = tiny_net()
    opt = build_optimizer(model, OptimConfig(lr=lr, bn_bias_lr_scale=lr_scale))
    sched = build_scheduler(opt, cfg, STEPS_PER_EPOCH, EPOCHS)
    trace = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "scheduler stepped before optimizer"
        for step in range(TOTAL):
            trace.append([g["lr"] for g in opt.param_groups])
            opt.zero_grad()
            loss_of(model).backward()
            opt.step()
            if cfg.name != "plateau":
                sched.step()
            elif (step + 1) % STEPS_PER_EPOCH == 0:
                sched.step(0.5)
    trace.append([g["lr"] for g in opt.param_groups])
    return trace


@pytest.mark.parametrize("warmup", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_steps_with_finite_positive_lr(name: str, warmup: float) -> None:
    cfg = ScheduleConfig(name=name, warmup_epochs=warmup, step_epochs=[2.0], restart_epochs=1.0,
                         plateau_patience=0, cyclic_epochs_up=1.0)
    trace = lr_trace(cfg, lr=0.1, lr_scale=2.0)
    assert len(trace) == TOTAL + 1
    for lrs in trace[:-1]:  # every lr a step used
        assert all(math.isfinite(v) and 0 < v <= 0.2 * (1 + 1e-6) for v in lrs), (name, trace)
        assert lrs[1] == pytest.approx(2 * lrs[0])  # groups keep their ratio throughout
    assert all(math.isfinite(v) and v >= 0 for v in trace[-1])
    if name not in ("plateau", "cyclic", "onecycle"):  # these three ignore warm-up
        warm = round(warmup * STEPS_PER_EPOCH)
        assert trace[0][0] == pytest.approx(0.1 * (cfg.warmup_start_factor if warm else 1.0))
        assert trace[warm][0] == pytest.approx(0.1)  # the peak, right after the warm-up
        if warm:
            assert trace[:warm + 1] == sorted(trace[:warm + 1])  # rising


def test_schedule_shapes() -> None:
    peak = 0.1
    const = [lrs[0] for lrs in lr_trace(ScheduleConfig(name="constant"))]
    assert const == [pytest.approx(peak)] * (TOTAL + 1)

    step = [lrs[0] for lrs in lr_trace(ScheduleConfig(name="step", step_epochs=[2.0], gamma=0.1, warmup_epochs=1.0))]
    at = 2 * STEPS_PER_EPOCH  # the decay lands at epoch 2 whatever the warm-up
    assert step[at - 1] == pytest.approx(peak) and step[at] == pytest.approx(peak * 0.1)

    linear = [lrs[0] for lrs in lr_trace(ScheduleConfig(name="linear", min_lr_factor=0.1))]
    assert linear == sorted(linear, reverse=True) and linear[-1] == pytest.approx(peak * 0.1)

    cosine = [lrs[0] for lrs in lr_trace(ScheduleConfig(name="cosine", min_lr_factor=0.0, warmup_epochs=1.0))]
    assert cosine[STEPS_PER_EPOCH:] == sorted(cosine[STEPS_PER_EPOCH:], reverse=True)
    assert cosine[-1] == pytest.approx(0.0, abs=1e-12)

    restarts = [lrs[0] for lrs in lr_trace(ScheduleConfig(name="cosine_restarts", restart_epochs=1.0))]
    assert restarts[STEPS_PER_EPOCH] == pytest.approx(peak) and restarts[STEPS_PER_EPOCH - 1] < peak

    onecycle = [lrs[0] for lrs in lr_trace(ScheduleConfig(name="onecycle", pct_start=0.25))]
    top = onecycle.index(max(onecycle))
    # trace[TOTAL - 1] is the last lr a step uses (OneCycleLR's value after the run is meaningless).
    assert max(onecycle) == pytest.approx(peak) and 0 < top < TOTAL and onecycle[TOTAL - 1] < peak / 1000

    cyclic = [lrs[0] for lrs in lr_trace(ScheduleConfig(name="cyclic", cyclic_epochs_up=1.0))]
    assert min(cyclic) == pytest.approx(peak * 0.01) and max(cyclic) == pytest.approx(peak)


def test_plateau_decays_per_epoch_and_respects_the_floor() -> None:
    cfg = ScheduleConfig(name="plateau", plateau_patience=0, gamma=0.5, min_lr_factor=0.3)
    per_epoch = [lrs[0] for lrs in lr_trace(cfg)][::STEPS_PER_EPOCH]
    # Never improving: the first epoch sets the best, each later one halves, down to 0.03.
    assert per_epoch == [pytest.approx(v) for v in (0.1, 0.1, 0.05, 0.03)]


def test_plateau_mode_follows_the_monitored_metric() -> None:
    for mode, better in (("val_acc", [0.1, 0.2, 0.3]), ("val_loss", [3.0, 2.0, 1.0])):
        opt = build_optimizer(tiny_net(), OptimConfig(lr=0.1))
        sched = build_scheduler(opt, ScheduleConfig(name="plateau", plateau_mode=mode, plateau_patience=0),
                                STEPS_PER_EPOCH, EPOCHS)
        for value in better:
            sched.step(value)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1), mode  # improving: no decay


@pytest.mark.parametrize("epochs,spe", [(1, 1), (1, 2), (2, 1)])
def test_tiny_runs_do_not_break_schedules(epochs: int, spe: int) -> None:
    """One or two steps in all, with a warm-up longer than the run: still a valid schedule."""
    for name in SCHEDULES:
        opt = build_optimizer(tiny_net(), OptimConfig(lr=0.1))
        sched = build_scheduler(opt, ScheduleConfig(name=name, warmup_epochs=5.0), spe, epochs)
        for _ in range(epochs * spe):
            opt.step()
            sched.step(0.5) if name == "plateau" else sched.step()
            assert all(math.isfinite(g["lr"]) and g["lr"] >= 0 for g in opt.param_groups), name


def test_scheduler_state_round_trips() -> None:
    """What a checkpoint stores: a rebuilt scheduler loaded mid-warm-up continues identically."""
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1.0)
    full = [lrs[0] for lrs in lr_trace(cfg)]
    model = tiny_net()
    opt = build_optimizer(model, OptimConfig(lr=0.1))
    sched = build_scheduler(opt, cfg, STEPS_PER_EPOCH, EPOCHS)
    for _ in range(2):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    opt2 = build_optimizer(model, OptimConfig(lr=0.1))
    sched2 = build_scheduler(opt2, cfg, STEPS_PER_EPOCH, EPOCHS)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    rest = []
    for _ in range(2, TOTAL):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert rest == pytest.approx(full[2:TOTAL])


def test_early_stopping_counts_epochs_without_improvement() -> None:
    stop = EarlyStopping(EarlyStoppingConfig(monitor="val_acc", patience=2, min_delta=0.01))
    assert [stop.update(v) for v in (0.5, 0.505, 0.6, 0.6, 0.59)] == [False, False, False, False, True]
    assert stop.best == 0.6
    restored = EarlyStopping(EarlyStoppingConfig(monitor="val_acc", patience=2))
    restored.load_state_dict({"best": 0.6, "bad_epochs": 1})
    assert restored.update(0.6) is True
    loss = EarlyStopping(EarlyStoppingConfig(monitor="val_loss", patience=1))
    assert [loss.update(v) for v in (1.0, 0.9, 0.95)] == [False, False, True]
    # A non-finite validation loss (a diverged model) is never an improvement.
    diverged = EarlyStopping(EarlyStoppingConfig(monitor="val_loss", patience=1))
    assert [diverged.update(v) for v in (1.0, math.nan)] == [False, True]
