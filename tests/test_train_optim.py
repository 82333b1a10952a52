"""Every optimizer and learning-rate schedule a run config can name builds and steps; parameter
groups exempt BN/bias from weight decay; early stopping counts epochs as documented."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import TypeAdapter
from torch import nn

from budgetnet.train.callbacks import EarlyStopping, EarlyStoppingConfig
from budgetnet.train.optim import OPTIMIZER_NAMES, LookaheadConfig, OptimConfig, build_optimizer
from budgetnet.train.schedules import SCHEDULE_NAMES, Plateau, ScheduleConfig, lr_factor
from budgetnet.train.tagged import kinds

OPTIMIZERS = list(OPTIMIZER_NAMES)
SCHEDULES = list(SCHEDULE_NAMES)
STEPS_PER_EPOCH, EPOCHS = 4, 3
TOTAL = STEPS_PER_EPOCH * EPOCHS


def optim(**fields: object) -> OptimConfig:
    return TypeAdapter(OptimConfig).validate_python(fields)


def schedule(name: str, **settings: object) -> ScheduleConfig:
    """The schedule `name` with those of `settings` it takes."""
    takes = kinds(ScheduleConfig)[name].model_fields
    return TypeAdapter(ScheduleConfig).validate_python({"name": name, **{k: v for k, v in settings.items() if k in takes}})


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def loss_of(model: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    return nn.functional.cross_entropy(model(x), y)


def test_every_kind_has_a_config() -> None:
    assert sorted(OPTIMIZERS) == sorted(["sgd", "adam", "adamw", "adamax", "adagrad", "rmsprop", "adadelta", "asgd", "muon"])
    assert SCHEDULES == ["constant", "step", "cosine", "cosine_restarts", "plateau", "cyclic", "onecycle", "linear"]


def test_a_setting_of_another_kind_is_refused() -> None:
    """A setting the chosen schedule or optimizer does not use is an error naming both, not a
    silent no-op; a complete section as one model dumped every kind's settings still loads."""
    from budgetnet.config import build_config
    from budgetnet.errors import BudgetnetError

    with pytest.raises(BudgetnetError, match=r"unknown key 'schedule.plateau_patience' \(not a setting of the cosine "
                                             r"schedule, which takes warmup_epochs, warmup_start_factor, min_lr_factor\)"):
        build_config({"schedule": {"name": "cosine", "plateau_patience": 3}})
    with pytest.raises(BudgetnetError, match="unknown key 'optim.momentum' .not a setting of the adam optimizer"):
        build_config({"optim": {"name": "adam", "momentum": 0.9}})
    every_setting = {"name": "adam", "lr": 0.01, "momentum": 0.8, "nesterov": True, "weight_decay": 0.0,
                     "no_decay_bn_bias": True, "bn_bias_lr_scale": 1.0, "betas": [0.8, 0.9], "eps": 1e-7,
                     "head_lr_scale": 1.0, "stem_bias_fraction": 1.0, "muon_lr": 0.24, "muon_momentum": 0.6}
    assert build_config({"optim": every_setting}).optim == optim(name="adam", lr=0.01, weight_decay=0.0,
                                                                 no_decay_bn_bias=True, betas=(0.8, 0.9), eps=1e-7)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_lowers_the_loss(name: str) -> None:
    model = tiny_net()
    lr = 1.0 if name == "adadelta" else 0.05  # adadelta's lr scales an already unit-free step
    opt = build_optimizer(model, optim(name=name, lr=lr, weight_decay=1e-4))
    assert type(opt).__name__.lower() == ("muonsgd" if name == "muon" else name)
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


def speedrun_net(**spec: object) -> nn.Module:
    from budgetnet.models import build_model, get_preset

    torch.manual_seed(0)
    return build_model(get_preset("speedrun_2m").model_copy(update={"channels": [8, 16, 16], **spec}))


def test_muon_groups_filters_head_and_stem_bias() -> None:
    """Muon takes every trainable conv filter and nothing else; the head gets its own lr, the
    whitening bias a shortened horizon, frozen parameters no group; weight decay per step is
    the same for every SGD group whatever its lr."""
    model = speedrun_net()
    cfg = optim(name="muon", lr=0.05, head_lr_scale=10.0, stem_bias_fraction=0.25, weight_decay=0.004,
                      muon_lr=0.2)
    opt = build_optimizer(model, cfg)
    biases, head, stem, filters = opt.param_groups
    assert all(p.ndim == 4 and p.requires_grad for p in filters["params"])
    assert len(filters["params"]) == 6 and filters["peak_lr"] == 0.2  # 3 stages x (conv + plain conv)
    assert head["params"] == [model.fc.weight] and head["peak_lr"] == pytest.approx(0.5)
    assert stem["params"] == [model.stem.conv.bias] and stem["horizon"] == 0.25
    assert all(g["lr"] * g["weight_decay"] == pytest.approx(0.004) for g in (biases, head, stem))
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert model.stem.conv.weight.requires_grad is False and id(model.stem.conv.weight) not in grouped


def test_muon_trains_the_squeeze_excite_gates_from_zero() -> None:
    """The gates' 1x1 convs are filters to Muon; the zero-initialized expand conv survives the
    renormalization (0 stays 0, no NaN) and leaves zero after one step."""
    model = speedrun_net(se_ratio=0.5)
    opt = build_optimizer(model, optim(name="muon"))
    filters = {id(p) for p in opt.param_groups[-1]["params"]}
    gates = [m for layer in model.layers for m in (layer[1].reduce, layer[1].expand)]
    assert all(id(m.weight) in filters for m in gates)
    nn.functional.cross_entropy(model(torch.randn(16, 3, 32, 32)), torch.randint(0, 10, (16,))).backward()
    opt.step()
    assert all(m.weight.isfinite().all() and m.weight.abs().sum() > 0 for m in gates)


def test_muon_steps_keep_filter_norms_and_resume_exactly() -> None:
    model = speedrun_net()
    opt = build_optimizer(model, optim(name="muon"))
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": copy.deepcopy(opt.state_dict())}
    step()
    after = {k: v.clone() for k, v in model.state_dict().items()}
    conv = model.layers[1].conv.weight
    # Renormalized to sqrt(out) before each step, and the orthogonalized step has a bounded size.
    assert conv.norm().item() == pytest.approx(len(conv) ** 0.5, rel=0.5)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    step()
    assert all(torch.equal(after[k], v) for k, v in model.state_dict().items())


def test_muon_ns_steps_reach_the_filter_update_and_old_checkpoints_step() -> None:
    """`muon_ns_steps` sets the Newton-Schulz iterations of the filters' update (3 is rougher than
    5: small singular values are pulled less far towards 1); a checkpoint saved before the knob existed,
    whose groups lack it, steps with the configured count."""
    from budgetnet.train.optim import _orthogonalize

    u, _, v = torch.linalg.svd(torch.randn(16, 72, generator=torch.Generator().manual_seed(0)), full_matrices=False)
    g = u @ torch.diag(torch.logspace(0, -3, 16)) @ v  # singular values 1 .. 1e-3
    smallest = {n: torch.linalg.svdvals(_orthogonalize(g, n)).min().item() for n in (3, 5)}
    assert smallest[3] < smallest[5]

    def filters_after_one_step(ns_steps: int, drop_knob: bool = False) -> torch.Tensor:
        model = speedrun_net()
        opt = build_optimizer(model, optim(name="muon", muon_ns_steps=ns_steps))
        if drop_knob:
            state = copy.deepcopy(opt.state_dict())
            for group in state["parts"][-1]["param_groups"]:
                del group["ns_steps"]
            opt.load_state_dict(state)
        x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.arange(4)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return model.layers[1].conv.weight.detach().clone()

    assert not torch.allclose(filters_after_one_step(3), filters_after_one_step(5))
    assert torch.equal(filters_after_one_step(3, drop_knob=True), filters_after_one_step(3))


@pytest.mark.parametrize("name", ["sgd", "muon"])
def test_lookahead_moves_alpha_of_the_way_every_k_steps(name: str) -> None:
    make = speedrun_net if name == "muon" else tiny_net
    net, plain_net = make(), make()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 32, 32, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    trainable = [p.detach().clone() for p in net.parameters() if p.requires_grad]
    wrapped = build_optimizer(net, optim(name=name, lr=0.05), lookahead=LookaheadConfig(steps=3, alpha=0.25))
    plain = build_optimizer(plain_net, optim(name=name, lr=0.05))
    assert [g["peak_lr"] for g in wrapped.param_groups] == [g["peak_lr"] for g in plain.param_groups]
    for k in range(3):
        for model, opt in ((net, wrapped), (plain_net, plain)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        if k < 2:  # between syncs the fast weights are the optimizer's own
            assert all(torch.equal(a, b) for a, b in zip(net.parameters(), plain_net.parameters(), strict=True))
    fast = [p for p in plain_net.parameters() if p.requires_grad]
    synced = [p for p in net.parameters() if p.requires_grad]
    for p, p0, pf in zip(synced, trainable, fast, strict=True):
        torch.testing.assert_close(p, p0 + 0.25 * (pf - p0))
    state = wrapped.state_dict()
    grouped = [p for group in wrapped.param_groups for p in group["params"]]
    assert state["steps"] == 3 and all(torch.equal(s, p) for s, p in zip(state["slow"], grouped, strict=True))


def test_param_groups_exempt_bn_and_bias_from_weight_decay() -> None:
    model = tiny_net()
    cfg = optim(lr=0.1, weight_decay=5e-4, no_decay_bn_bias=True, bn_bias_lr_scale=2.0)
    weights, others = build_optimizer(model, cfg).param_groups
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in others["params"])
    assert len(others["params"]) == 3  # BN weight and bias, Linear bias
    assert (weights["weight_decay"], others["weight_decay"]) == (5e-4, 0.0)
    assert (weights["lr"], others["lr"]) == (0.1, 0.2)
    # Every trainable parameter in exactly one group.
    grouped = [id(p) for g in (weights, others) for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters()) and len(set(grouped)) == len(grouped)

    decayed = build_optimizer(model, optim(weight_decay=5e-4)).param_groups
    assert [g["weight_decay"] for g in decayed] == [5e-4, 5e-4]


def test_nesterov_needs_momentum() -> None:
    opt = build_optimizer(tiny_net(), optim(name="sgd", nesterov=True, momentum=0.0))
    assert opt.defaults["nesterov"] is False
    opt = build_optimizer(tiny_net(), optim(name="sgd", nesterov=True, momentum=0.9))
    assert opt.defaults["nesterov"] is True


def lr_trace(cfg: ScheduleConfig, lr: float = 0.1, lr_scale: float = 1.0) -> list[list[float]]:
    """Per-group lr before each step of a whole run, as the loop sets it (plateau: metrics
    that never improve, reported at each epoch's end)."""
    opt = build_optimizer(tiny_net(), optim(lr=lr, bn_bias_lr_scale=lr_scale))
    plateau = Plateau(cfg)
    trace = []
    for step in range(TOTAL + 1):
        factor = lr_factor(cfg, step, TOTAL, EPOCHS) * plateau.scale
        trace.append([g["peak_lr"] * factor for g in opt.param_groups])
        if cfg.name == "plateau" and (step + 1) % STEPS_PER_EPOCH == 0:
            plateau.update(0.5)
    return trace


@pytest.mark.parametrize("warmup", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_steps_with_finite_positive_lr(name: str, warmup: float) -> None:
    cfg = schedule(name, warmup_epochs=warmup, step_epochs=[2.0], restart_epochs=1.0, plateau_patience=0,
                   cyclic_epochs_up=1.0)
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
    const = [lrs[0] for lrs in lr_trace(schedule("constant"))]
    assert const == [pytest.approx(peak)] * (TOTAL + 1)

    step = [lrs[0] for lrs in lr_trace(schedule("step", step_epochs=[2.0], gamma=0.1, warmup_epochs=1.0))]
    at = 2 * STEPS_PER_EPOCH  # the decay lands at epoch 2 whatever the warm-up
    assert step[at - 1] == pytest.approx(peak) and step[at] == pytest.approx(peak * 0.1)

    linear = [lrs[0] for lrs in lr_trace(schedule("linear", min_lr_factor=0.1))]
    assert linear == sorted(linear, reverse=True) and linear[-1] == pytest.approx(peak * 0.1)

    cosine = [lrs[0] for lrs in lr_trace(schedule("cosine", min_lr_factor=0.0, warmup_epochs=1.0))]
    assert cosine[STEPS_PER_EPOCH:] == sorted(cosine[STEPS_PER_EPOCH:], reverse=True)
    assert cosine[-1] == pytest.approx(0.0, abs=1e-12)

    restarts = [lrs[0] for lrs in lr_trace(schedule("cosine_restarts", restart_epochs=1.0))]
    assert restarts[STEPS_PER_EPOCH] == pytest.approx(peak) and restarts[STEPS_PER_EPOCH - 1] < peak

    onecycle = [lrs[0] for lrs in lr_trace(schedule("onecycle", pct_start=0.25))]
    top = onecycle.index(max(onecycle))
    # trace[TOTAL - 1] is the last lr a step uses (OneCycleLR's value after the run is meaningless).
    assert max(onecycle) == pytest.approx(peak) and 0 < top < TOTAL and onecycle[TOTAL - 1] < peak / 1000

    cyclic = [lrs[0] for lrs in lr_trace(schedule("cyclic", cyclic_epochs_up=1.0))]
    assert min(cyclic) == pytest.approx(peak * 0.01) and max(cyclic) == pytest.approx(peak)


def test_plateau_decays_per_epoch_and_respects_the_floor() -> None:
    cfg = schedule("plateau", plateau_patience=0, gamma=0.5, min_lr_factor=0.3)
    per_epoch = [lrs[0] for lrs in lr_trace(cfg)][::STEPS_PER_EPOCH]
    # Never improving: the first epoch sets the best, each later one halves, down to 0.03.
    assert per_epoch == [pytest.approx(v) for v in (0.1, 0.1, 0.05, 0.03)]


def test_plateau_mode_follows_the_monitored_metric() -> None:
    for mode, better in (("val_acc", [0.1, 0.2, 0.3]), ("val_loss", [3.0, 2.0, 1.0])):
        plateau = Plateau(schedule("plateau", plateau_mode=mode, plateau_patience=0))
        for value in better:
            plateau.update(value)
        assert plateau.scale == 1.0, mode  # improving: no decay
        plateau.update(better[0])
        assert plateau.scale == pytest.approx(0.1), mode


@pytest.mark.parametrize("epochs,spe", [(1, 1), (1, 2), (2, 1)])
def test_tiny_runs_do_not_break_schedules(epochs: int, spe: int) -> None:
    """One or two steps in all, with a warm-up longer than the run: still a valid schedule."""
    for name in SCHEDULES:
        cfg = schedule(name, warmup_epochs=5.0)
        for step in range(epochs * spe + 1):
            factor = lr_factor(cfg, step, epochs * spe, epochs)
            assert math.isfinite(factor) and factor >= 0, name


def test_plateau_state_round_trips() -> None:
    """The one schedule state a checkpoint stores: a restored plateau decays where the original
    would (every other schedule is a pure function of the step)."""
    cfg = schedule("plateau", plateau_patience=1, gamma=0.5)
    original = Plateau(cfg)
    for value in (0.5, 0.4):
        original.update(value)
    restored = Plateau(cfg)
    restored.load_state_dict(original.state_dict())
    for plateau in (original, restored):
        plateau.update(0.4)
    assert restored.scale == original.scale == 0.5


def test_compressed_schedule_keeps_its_shape() -> None:
    """Re-planning a run to fewer steps is changing total_steps: the warm-up and decay land at
    the same fractions of the run."""
    cfg = schedule("linear", warmup_epochs=1.0, warmup_start_factor=0.1)
    full = [lr_factor(cfg, s, 40, 4) for s in range(40)]
    half = [lr_factor(cfg, s, 20, 4) for s in range(20)]
    assert half == pytest.approx(full[::2], abs=0.06)
    assert max(half) == pytest.approx(1.0) and half.index(max(half)) == 5


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
