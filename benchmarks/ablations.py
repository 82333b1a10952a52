"""Ablations of the default recipe: what each speed-run component is worth at fixed compute.

Each row is the baseline with one change, given as config overrides (data, not code), held to
the baseline's training compute (rows that change the cost of a step, such as progressive
resizing or the batch size, get the steps that compute pays for). Two protocols:

- `proxy` (what fits a 2-core CPU): a stratified 15,000-image subset of the training split,
  5,000 of it held out for validation (split seed 0), `--epochs` (3) epochs of the other 10,000.
  Its baseline is the default recipe as it was when its rows were measured: Nesterov momentum
  on the parameters Muon does not train, and airbench's SGD learning rates as published, which
  are for a loss summed over the batch (budgetnet's is the mean; rows measure both changes).
- `full` (the validation protocol, for a GPU or a fast CPU): 45,000 training images and 5,000
  held out (split seed 0), 8 epochs, about 0.25 PFLOP a row; the baseline is the default recipe
  before crops (batches of 2,000, Muon lr 0.24, 2x2 max-pools: what its rows were measured
  against; the crop, batch and pooling rows are the changes since), and an EMA of the weights gets a row (over the proxy's 15 steps
  it would average untrained weights).

Rows print and append to `--out` (JSON lines) as they finish; a row already in that file is
skipped, so a killed run continues where it stopped, and `--deadline-s` starts no row after
that many seconds. The `no TTA` row evaluates the baseline's best.pt again without test-time
augmentation (no training). The markdown table goes to `--table`.

    .venv/bin/python benchmarks/ablations.py [--protocol proxy|full] [--data ZIP] [--epochs N]
        [--seeds 0,1,2] [--deadline-s S] [--rows TEXT] [--out ROWS.jsonl] [--table TABLE.md]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetnet.config import RunConfig, deep_merge, load_config
from budgetnet.evaluate import evaluate_checkpoint
from budgetnet.machine import describe_machine
from budgetnet.models.budget import forward_flops
from budgetnet.train.engine import train


@dataclass(frozen=True)
class Protocol:
    baseline: str  # the baseline row's name
    data: dict[str, Any]
    train_images: int  # images trained an epoch, before whole batches
    epochs: int
    base: dict[str, Any]  # overrides every row starts from
    rows: tuple[str, ...]  # the rows of ROWS this protocol runs, after its baseline
    describe: str
    outputs: str  # stem of the default --out/--table files


# airbench's SGD lrs (BN shifts and stem bias, head) as published for its summed loss, and x 2,000
# for a mean loss with the head's converted to budgetnet's head scale (recipes/flagship.yaml: why).
_PUBLISHED_LRS = {"lr": 0.053, "head_lr_scale": 12.64}
_MEAN_LOSS_LRS = {"lr": 106.0, "head_lr_scale": 0.015625}
# Both protocols' rows were measured against the default recipe before it cropped its first half
# (the full protocol's crop rows are that change) and before it took batches of 1,000 with Muon's
# lr scaled to them (its second-last row), so their baselines leave the crops out and keep airbench's
# batch of 2,000 and Muon lr of 0.24.
_BEFORE_CROPS = {"progressive": [], "batch_size": 2000}
_AIRBENCH_MUON_LR = {"muon_lr": 0.24}
# ... and before it took anti-aliased pooling (the full protocol's last row): 2x2 max-pools.
_MAX_POOLS = {"pool_blur": False}
# The default recipe's crop stage, in pixels as its rows were measured: 28 px for the first half.
_CROPS_28_HALF = [{"until": 0.5, "size": 28, "mode": "crop"}]
# The default recipe itself in the full protocol: those crops over 9 epochs (1.125x the 8).
_DEFAULT_CROPS = {"train": {"progressive": _CROPS_28_HALF}, "epochs_factor": 1.125}
# ... at batch 1,000 with Muon's lr scaled to it, the default before anti-aliased pooling.
_BATCH_1000 = deep_merge(_DEFAULT_CROPS, {"train": {"batch_size": 1000}, "optim": {"muon_lr": 0.17}})
ROWS: dict[str, dict[str, Any]] = {
    "3x3 conv stem (BN, 24 ch) instead of whitening": {"model": {"stem": "conv", "stem_width": 24}},
    "kaiming init instead of dirac": {"model": {"conv_init": "kaiming"}},
    "ReLU instead of GELU": {"model": {"activation": "relu"}},
    # The proxy's two best single changes to the net (+0.4 and +1.1 points on two seeds there).
    "ReLU and kaiming init (the proxy's two best changes to the net)": {
        "model": {"activation": "relu", "conv_init": "kaiming"}},
    "learned BN scale, momentum 0.1": {"model": {"bn_frozen_scale": False, "bn_momentum": 0.1, "bn_eps": 1e-5}},
    "Nesterov SGD lr 0.2 (wd 5e-4, no BN decay) instead of Muon": {
        "optim": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                  "no_decay_bn_bias": True}},
    # The first 40% of the steps at 24 px cost 52% as much, so the same compute pays for about
    # 1.2x the steps: 18 instead of 15 on the proxy, 217 instead of 176 at full size.
    "progressive resizing: 24 px for the first 40%, more steps at the same PFLOP": {
        "train": {"progressive": [{"until": 0.4, "size": 24}]}, "epochs_factor": 1.25},
    "plain momentum on the non-filter parameters": {"optim": {"nesterov": False}},
    "SGD lrs for a mean loss (BN shifts 0.053 -> 106, head 0.67 -> 1.66)": {"optim": _MEAN_LOSS_LRS},
    "SGD lrs for a mean loss, plain momentum (the default recipe now)": {
        "optim": {**_MEAN_LOSS_LRS, "nesterov": False}},
    "SGD lrs as published, for a summed loss (the default recipe before)": {"optim": _PUBLISHED_LRS},
    "Nesterov momentum on the non-filter parameters": {"optim": {"nesterov": True}},
    "no label smoothing (0.2 -> 0)": {"train": {"label_smoothing": 0.0}},
    "random flip instead of alternating": {"augment": {"flip": {"mode": "random"}}},
    "translate up to 4 px instead of 2": {"augment": {"crop": {"padding": 4}}},
    "cutout 12 px": {"augment": {"cutout": {"size": 12}}},
    # Same images and PFLOP, twice the steps; the per-step learning rates and decay as they are.
    "batch 1,000 instead of 2,000": {"train": {"batch_size": 1000}},
    "one learning rate for the head (head_lr_scale 1)": {"optim": {"head_lr_scale": 1.0}},
    "EMA of the weights, decay 0.98 a step": {"train": {"ema_decay": 0.98}},
    "Lookahead, 5 steps, alpha 0.5": {"train": {"lookahead": {"steps": 5, "alpha": 0.5}}},
    # The hyperparameters of the public 2.095 s CIFAR-10 speed-run record (after airbench94 +
    # Muon), its SGD lrs converted to a mean loss over its batch of 1,536 as the recipe's are for
    # 2,000 (recipes/flagship.yaml: why); its jitter of normalized images in PIL terms. Left out: its
    # weight decay on the filters and renormalization every 8 steps instead of every step.
    "the 2.095 s record's hyperparameters (batch 1,536, SiLU, colour jitter, 3 Newton-Schulz steps)": {
        "model": {"activation": "silu", "bn_momentum": 0.4434},
        "augment": {"color_jitter": {"brightness": 0.075, "contrast": 0.13, "saturation": 0.0}},
        "optim": {"muon_lr": 0.205, "muon_momentum": 0.655, "muon_ns_steps": 3, "lr": 88.0, "momentum": 0.825,
                  "nesterov": True, "head_lr_scale": 0.01168, "weight_decay": 0.0016, "stem_bias_fraction": 0.025},
        "train": {"batch_size": 1536, "micro_batch": 512, "label_smoothing": 0.09}},
    # Width against epochs at the same compute: airbench's widths were tuned for GPU seconds, in
    # which thin layers are dear; counted in FLOPs, the 32 px first block is 18% of the net's.
    "first block 32 wide (32/256/256), 1.33x the steps at the same PFLOP": {
        "model": {"channels": [32, 256, 256]}, "epochs_factor": 1.34},
    "widths 48/192/192, 1.71x the steps at the same PFLOP": {
        "model": {"channels": [48, 192, 192]}, "epochs_factor": 1.72},
    "widths 80/320/320, 0.66x the steps at the same PFLOP": {"model": {"channels": [80, 320, 320]}},
    # Past 48/192/192 (+0.25 on three seeds): thinner still, or a wider last stage, whose 7x7 and
    # 3x3 maps make its channels cheap in FLOPs.
    "widths 40/160/160, 2.39x the steps at the same PFLOP": {
        "model": {"channels": [40, 160, 160]}, "epochs_factor": 2.39},
    "widths 48/192/256, 1.54x the steps at the same PFLOP": {
        "model": {"channels": [48, 192, 256]}, "epochs_factor": 1.54},
    # Depth where it is cheap in FLOPs: a plain 256-channel conv on the last stage's 3x3 maps
    # costs 4.5% of the net's FLOPs for 30% more parameters (590k, of the 5M allowed).
    "a second plain conv in the last stage (blocks 1/1/2), 0.96x the steps at the same PFLOP": {
        "model": {"blocks": [1, 1, 2]}},
    "two more plain convs in the last stage (blocks 1/1/3), 0.92x the steps at the same PFLOP": {
        "model": {"blocks": [1, 1, 3]}},
    # Data selection at the same steps and PFLOP (train/selection.py): InfoBatch's CIFAR-10
    # settings; epoch 1 trains on everything (no losses yet), epoch 8 too (the last eighth).
    "data selection (InfoBatch: images under the mean loss sit out half the epochs 2-7)": {
        "train": {"data_selection": {"prune": 0.5, "until": 0.875}}},
    # airbench normalizes each BN over its whole 2,000-image batch; the recipe forwards 500-image
    # slices (a run 1.45x faster on CPUs), so its BN batch statistics are those of 500 images.
    "BN statistics over the whole 2,000-image batch (no 500-image slices)": {"train": {"micro_batch": None}},
    # airbench94_muon runs 3 Newton-Schulz iterations (in bf16); the recipe runs torch.optim.Muon's 5.
    "3 Newton-Schulz iterations instead of 5, as in airbench94 + Muon": {"optim": {"muon_ns_steps": 3}},
    # The two changes with the best three-seed means (+0.13 and +0.05 points), together: does
    # what each adds inside the seed spread add up? (Whole-batch BN is left out: 1.45x the seconds.)
    "the two best three-seed means together (muon_ns_steps 3, label_smoothing 0)": {
        "optim": {"muon_ns_steps": 3}, "train": {"label_smoothing": 0.0}},
    # The best width row (48/192/192, +0.25 on three seeds in bf16) with the best three-seed changes
    # that keep its steps: Newton-Schulz 3 (+0.13 in fp32), a plain conv on the 3x3 maps (+0.04).
    "widths 48/192/192 and 3 Newton-Schulz iterations, 1.71x the steps at the same PFLOP": {
        "model": {"channels": [48, 192, 192]}, "optim": {"muon_ns_steps": 3}, "epochs_factor": 1.72},
    "widths 48/192/192 and blocks 1/1/2, 1.64x the steps at the same PFLOP": {
        "model": {"channels": [48, 192, 192], "blocks": [1, 1, 2]}, "epochs_factor": 1.64},
    # Muon's filter lr (0.24) is airbench94's, tuned on the official PNGs with whole-batch BN and
    # never measured here: the recipe's one large knob not yet moved at full size.
    "Muon lr 0.16 instead of 0.24 (x2/3)": {"optim": {"muon_lr": 0.16}},
    "Muon lr 0.36 instead of 0.24 (x1.5)": {"optim": {"muon_lr": 0.36}},
    "SGD lr of the BN shifts and stem bias x0.5 (106 -> 53; head unchanged)": {"optim": {"bn_bias_lr_scale": 0.5}},
    "SGD lr of the BN shifts and stem bias x2 (106 -> 212; head unchanged)": {"optim": {"bn_bias_lr_scale": 2.0}},
    "head lr x0.5 (1.66 -> 0.83)": {"optim": {"head_lr_scale": 0.0078125}},
    "head lr x2 (1.66 -> 3.31)": {"optim": {"head_lr_scale": 0.03125}},
    "head lr x4 (1.66 -> 6.62)": {"optim": {"head_lr_scale": 0.0625}},
    "Muon momentum 0.5 instead of 0.6": {"optim": {"muon_momentum": 0.5}},
    "Muon momentum 0.7 instead of 0.6": {"optim": {"muon_momentum": 0.7}},
    # The three changes with the best ten-seed paired means on an H200 (+0.16, +0.10, +0.07;
    # results README, "Ten seeds on an NVIDIA H200"), together: do they add up to the 0.44 the
    # default lacks?
    "widths 48/192/256, Muon momentum 0.7 and 3 Newton-Schulz iterations, 1.54x the steps": {
        "model": {"channels": [48, 192, 256]}, "optim": {"muon_momentum": 0.7, "muon_ns_steps": 3},
        "epochs_factor": 1.54},
    # Progressive cropping: a smaller random window of each image instead of the whole image
    # downscaled (the progressive row above), so the objects keep the scale validation sees them
    # at, and a step costs what its smaller maps cost (28 px: 0.76 of 32 px; the net's last maps
    # are 3x3 at either size). The compute saved pays for more steps.
    "random 28 px crops throughout (whole 32 px images at validation), 1.32x the steps": {
        "train": {"progressive": [{"until": 1.0, "size": 28, "mode": "crop"}]}, "epochs_factor": 1.33},
    "random 28 px crops for the first 75%, 1.22x the steps": {
        "train": {"progressive": [{"until": 0.75, "size": 28, "mode": "crop"}]}, "epochs_factor": 1.23},
    "random 28 px crops for the first 50%, 1.14x the steps": {
        "train": {"progressive": _CROPS_28_HALF}, "epochs_factor": 1.15},
    "random 26 px crops for the first 50%, 1.17x the steps": {
        "train": {"progressive": [{"until": 0.5, "size": 26, "mode": "crop"}]}, "epochs_factor": 1.18},
    "random 24 px crops for the first 40%, 1.24x the steps": {
        "train": {"progressive": [{"until": 0.4, "size": 24, "mode": "crop"}]}, "epochs_factor": 1.25},
    "widths 48/192/256 and random 28 px crops throughout, 2.02x the steps": {
        "model": {"channels": [48, 192, 256]},
        "train": {"progressive": [{"until": 1.0, "size": 28, "mode": "crop"}]}, "epochs_factor": 2.03},
    # Around and on top of the best crop row (28 px for the first 50%: +0.27 on ten seeds, H200).
    "random 28 px crops for the first 40%, 1.11x the steps": {
        "train": {"progressive": [{"until": 0.4, "size": 28, "mode": "crop"}]}, "epochs_factor": 1.12},
    "random 28 px crops for the first 60%, 1.17x the steps": {
        "train": {"progressive": [{"until": 0.6, "size": 28, "mode": "crop"}]}, "epochs_factor": 1.18},
    "random 24 px crops for the first 30%, then 28 px until 60%, 1.28x the steps": {
        "train": {"progressive": [{"until": 0.3, "size": 24, "mode": "crop"}, {"until": 0.6, "size": 28, "mode": "crop"}]},
        "epochs_factor": 1.28},
    "widths 48/192/256 and random 28 px crops for the first 50%, 1.75x the steps": {
        "model": {"channels": [48, 192, 256]},
        "train": {"progressive": _CROPS_28_HALF}, "epochs_factor": 1.75},
    "random 28 px crops for the first 50% and Muon momentum 0.7, 1.14x the steps": {
        "optim": {"muon_momentum": 0.7},
        "train": {"progressive": _CROPS_28_HALF}, "epochs_factor": 1.15},
    "random 28 px crops for the first 50% and 3 Newton-Schulz iterations, 1.14x the steps": {
        "optim": {"muon_ns_steps": 3},
        "train": {"progressive": _CROPS_28_HALF}, "epochs_factor": 1.15},
    # The 50% row in whole epochs, as a recipe states its length: 9 of 22 steps, 198 steps.
    "random 28 px crops for the first 50%, 9 epochs (1.125x the steps)": _DEFAULT_CROPS,
    # On top of the default's crops (the row above), the changes that came nearest alone before
    # them or that the crops could change: more, smaller steps (401 of 1,000: the compute cap
    # binds), no label smoothing (+0.05 alone on three seeds), less translation where the crop
    # stage already moves the window.
    "the default's crops with batch 1,000 (9 epochs)": deep_merge(_DEFAULT_CROPS, {"train": {"batch_size": 1000}}),
    "the default's crops with no label smoothing (9 epochs)": deep_merge(
        _DEFAULT_CROPS, {"train": {"label_smoothing": 0.0}}),
    "the default's crops with translate up to 1 px (9 epochs)": deep_merge(
        _DEFAULT_CROPS, {"augment": {"crop": {"padding": 1}}}),
    # The Nesterov momentum airbench94 + Muon gives its SGD part (the recipe runs plain
    # momentum), and a run that ends at a tenth of the peak lr instead of zero.
    "the default's crops with Nesterov SGD on the BN shifts and head (9 epochs)": deep_merge(
        _DEFAULT_CROPS, {"optim": {"nesterov": True}}),
    "the default's crops with the lr ending at 0.1 of its peak (9 epochs)": deep_merge(
        _DEFAULT_CROPS, {"schedule": {"min_lr_factor": 0.1}}),
    # Batch 1,000 with Muon's per-step lr x sqrt(1/2), the square-root rule adaptive optimizers
    # scale with the batch by: Muon's step has a fixed size whatever the batch, so at 0.24 twice
    # the steps move the filters about twice as far.
    "the default's crops with batch 1,000 and Muon lr 0.17 (9 epochs)": _BATCH_1000,
    # On top of it, anti-aliased max-pooling (0.22% more FLOPs: 400 steps in the cap). The
    # default recipe now.
    "the default's crops with batch 1,000, Muon lr 0.17 and anti-aliased pooling (9 epochs)": deep_merge(
        _BATCH_1000, {"model": {"pool_blur": True}}),
}
_CROPS = ("random 28 px crops throughout (whole 32 px images at validation), 1.32x the steps",
          "random 28 px crops for the first 75%, 1.22x the steps", "random 28 px crops for the first 50%, 1.14x the steps",
          "random 26 px crops for the first 50%, 1.17x the steps", "random 24 px crops for the first 40%, 1.24x the steps",
          "widths 48/192/256 and random 28 px crops throughout, 2.02x the steps",
          "random 28 px crops for the first 40%, 1.11x the steps", "random 28 px crops for the first 60%, 1.17x the steps",
          "random 24 px crops for the first 30%, then 28 px until 60%, 1.28x the steps",
          "widths 48/192/256 and random 28 px crops for the first 50%, 1.75x the steps",
          "random 28 px crops for the first 50% and Muon momentum 0.7, 1.14x the steps",
          "random 28 px crops for the first 50% and 3 Newton-Schulz iterations, 1.14x the steps",
          "random 28 px crops for the first 50%, 9 epochs (1.125x the steps)",
          "the default's crops with batch 1,000 (9 epochs)", "the default's crops with no label smoothing (9 epochs)",
          "the default's crops with translate up to 1 px (9 epochs)",
          "the default's crops with Nesterov SGD on the BN shifts and head (9 epochs)",
          "the default's crops with the lr ending at 0.1 of its peak (9 epochs)",
          "the default's crops with batch 1,000 and Muon lr 0.17 (9 epochs)",
          "the default's crops with batch 1,000, Muon lr 0.17 and anti-aliased pooling (9 epochs)")
_WIDTHS = ("first block 32 wide (32/256/256), 1.33x the steps at the same PFLOP",
           "widths 48/192/192, 1.71x the steps at the same PFLOP", "widths 80/320/320, 0.66x the steps at the same PFLOP",
           "widths 40/160/160, 2.39x the steps at the same PFLOP", "widths 48/192/256, 1.54x the steps at the same PFLOP")
_DEPTH = ("a second plain conv in the last stage (blocks 1/1/2), 0.96x the steps at the same PFLOP",
          "two more plain convs in the last stage (blocks 1/1/3), 0.92x the steps at the same PFLOP")
_COMMON = ("3x3 conv stem (BN, 24 ch) instead of whitening", "kaiming init instead of dirac", "ReLU instead of GELU",
           "learned BN scale, momentum 0.1", "Nesterov SGD lr 0.2 (wd 5e-4, no BN decay) instead of Muon",
           "progressive resizing: 24 px for the first 40%, more steps at the same PFLOP")
_AUGMENT = ("no label smoothing (0.2 -> 0)", "random flip instead of alternating", "translate up to 4 px instead of 2",
            "cutout 12 px", "batch 1,000 instead of 2,000", "one learning rate for the head (head_lr_scale 1)",
            "Lookahead, 5 steps, alpha 0.5")
PROTOCOLS: dict[str, Protocol] = {
    "proxy": Protocol(
        baseline="baseline (speedrun_2m, Muon; Nesterov on the rest)",
        data={"subset": 15_000, "val_size": 5_000, "split_seed": 0}, train_images=10_000, epochs=3,
        base={"model": _MAX_POOLS, "optim": {"nesterov": True, **_PUBLISHED_LRS, **_AIRBENCH_MUON_LR},
              "train": _BEFORE_CROPS},
        rows=(*_COMMON, "plain momentum on the non-filter parameters", *_AUGMENT,
              "SGD lrs for a mean loss (BN shifts 0.053 -> 106, head 0.67 -> 1.66)",
              "SGD lrs for a mean loss, plain momentum (the default recipe now)"),
        describe="{epochs} epochs of 10,000 training images, validation on 5,000 held out (15,000-image "
                 "stratified subset of the shared zip, split seed 0)",
        outputs="ablations"),
    "full": Protocol(
        baseline="baseline (the default recipe before crops)",
        data={"val_size": 5_000, "split_seed": 0}, train_images=45_000, epochs=8,
        base={"model": _MAX_POOLS, "optim": _AIRBENCH_MUON_LR, "train": {"time_budget_s": None, **_BEFORE_CROPS}},
        rows=(*_COMMON, "Nesterov momentum on the non-filter parameters", *_AUGMENT,
              "EMA of the weights, decay 0.98 a step", "SGD lrs as published, for a summed loss (the default recipe before)",
              "the 2.095 s record's hyperparameters (batch 1,536, SiLU, colour jitter, 3 Newton-Schulz steps)",
              *_WIDTHS, *_DEPTH, "ReLU and kaiming init (the proxy's two best changes to the net)",
              "data selection (InfoBatch: images under the mean loss sit out half the epochs 2-7)",
              "BN statistics over the whole 2,000-image batch (no 500-image slices)",
              "3 Newton-Schulz iterations instead of 5, as in airbench94 + Muon",
              "the two best three-seed means together (muon_ns_steps 3, label_smoothing 0)",
              "widths 48/192/192 and 3 Newton-Schulz iterations, 1.71x the steps at the same PFLOP",
              "widths 48/192/192 and blocks 1/1/2, 1.64x the steps at the same PFLOP",
              "Muon lr 0.16 instead of 0.24 (x2/3)", "Muon lr 0.36 instead of 0.24 (x1.5)",
              "SGD lr of the BN shifts and stem bias x0.5 (106 -> 53; head unchanged)",
              "SGD lr of the BN shifts and stem bias x2 (106 -> 212; head unchanged)",
              "head lr x0.5 (1.66 -> 0.83)", "head lr x2 (1.66 -> 3.31)", "head lr x4 (1.66 -> 6.62)",
              "Muon momentum 0.5 instead of 0.6", "Muon momentum 0.7 instead of 0.6",
              "widths 48/192/256, Muon momentum 0.7 and 3 Newton-Schulz iterations, 1.54x the steps", *_CROPS),
        describe="{epochs} epochs of 45,000 training images, validation on 5,000 held out (split seed 0)",
        outputs="ablations-full"),
}
NO_TTA = "no TTA (the default run, evaluated without it)"


def baseline_pflop(proto: Protocol, epochs: int, data: str) -> float:
    """The baseline's training compute: 3 x forward FLOPs x the whole batches of its epochs.
    One part in 1e9 over it, so that float rounding never costs a row with the same steps one."""
    cfg = load_config(overrides={"name": "ablation", **deep_merge(proto.base, {"data": {"path": data, **proto.data}})})
    batch = cfg.train.batch_size
    images = epochs * (proto.train_images // batch) * batch
    return 3 * forward_flops(cfg.model) * images / 1e15 * (1 + 1e-9)


def row_config(proto: Protocol, over: dict[str, Any], seed: int, data: str, epochs: int, pflop: float) -> RunConfig:
    """The run config of one row: the protocol's data and base, the row's changes, the compute."""
    over = dict(over)
    start = {"data": {"path": data, **proto.data},
             "train": {"epochs": math.ceil(epochs * over.pop("epochs_factor", 1)), "seed": seed,
                       "pflop_budget": pflop}}
    # A row that names another optimizer takes its section whole: the base's fields are Muon's.
    base = {k: v for k, v in proto.base.items() if k != "optim" or "name" not in over.get("optim", {})}
    return load_config(overrides={"name": "ablation", **deep_merge(deep_merge(start, base), over)})


def run_row(name: str, over: dict[str, Any], seed: int, args: argparse.Namespace, pflop: float) -> dict[str, Any]:
    cfg = row_config(PROTOCOLS[args.protocol], over, seed, args.data, args.epochs, pflop)
    result = train(cfg, runs_root=Path(args.runs_dir), quiet=True)
    s = result.summary
    return {"row": name, "seed": seed, "val_acc_tta": s["final_val_acc"], "train_pflop": s["train_pflop"],
            "train_seconds": s["train_seconds"], "params": s["params"], "precision": s["precision"],
            "machine": describe_machine(), "run_dir": str(result.run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_zip = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-train-jpg.zip"
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="proxy")
    parser.add_argument("--data", default=str(default_zip))
    parser.add_argument("--epochs", type=int, help="epochs of the baseline (proxy: 3, full: 8)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--deadline-s", type=float, help="start no row after this many seconds")
    parser.add_argument("--rows", action="append", help="only the baseline and the rows whose name contains this "
                                                         "text; repeat for several (`baseline`: the baseline alone)")
    parser.add_argument("--runs-dir", default="runs/ablations")
    parser.add_argument("--out", help="rows as JSON lines [docs/results/accuracy_per_flop/<protocol's>.jsonl]")
    parser.add_argument("--table", help="markdown table [docs/results/accuracy_per_flop/<protocol's>.md]")
    args = parser.parse_args()
    proto = PROTOCOLS[args.protocol]
    args.epochs = args.epochs or proto.epochs
    results = Path("docs/results/accuracy_per_flop")
    out = Path(args.out or results / f"{proto.outputs}.jsonl")
    table = Path(args.table or results / f"{proto.outputs}.md")
    started = time.monotonic()
    pflop = baseline_pflop(proto, args.epochs, args.data)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    seen = {(d["row"], d["seed"]) for d in done}
    picked = [name for name in proto.rows if args.rows is None or any(text in name for text in args.rows)]
    for text in args.rows or ():
        if text not in proto.baseline and not any(text in name for name in picked):  # `baseline`: it alone
            parser.error(f"no row of the {args.protocol} protocol contains {text!r}")
    rows = {proto.baseline: {}, **{name: ROWS[name] for name in picked}}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, over in rows.items():
            if args.deadline_s is not None and time.monotonic() - started > args.deadline_s:
                print(f"ablations: deadline of {args.deadline_s:.0f} s reached; run again to continue", flush=True)
                write_table(table, done, args)
                return
            if (name, seed) not in seen:
                record(out, done, run_row(name, over, seed, args, pflop))
        if (NO_TTA, seed) not in seen:
            base = next(d for d in done if d["row"] == proto.baseline and d["seed"] == seed)
            result, _ = evaluate_checkpoint(Path(base["run_dir"]), data_path=args.data, split="val", tta=False)
            record(out, done, {**base, "row": NO_TTA, "val_acc_tta": result.accuracy})
    write_table(table, done, args)


def record(out: Path, done: list[dict[str, Any]], row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)
    done.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")


def write_table(path: Path, done: list[dict[str, Any]], args: argparse.Namespace) -> None:
    proto = PROTOCOLS[args.protocol]
    names = list(dict.fromkeys(d["row"] for d in done))
    seeds = ",".join(str(s) for s in sorted({d["seed"] for d in done}))
    base = statistics.mean(d["val_acc_tta"] for d in done if d["row"] == proto.baseline)
    machines = "; ".join(sorted({d["machine"] for d in done}))
    precisions = ", ".join(sorted({d["precision"] for d in done}))
    files = "" if args.out is None else f" --out {args.out} --table {args.table}"
    lines = [
        f"{args.protocol.capitalize()}: {proto.describe.format(epochs=args.epochs)}. Machine: {machines}; "
        f"precision {precisions}.",
        f"Command: `python benchmarks/ablations.py --protocol {args.protocol} --epochs {args.epochs} --seeds {seeds}{files}` "
        "(rows run so far at the number of seeds in their column; the command runs the rest, skipping what is done).",
        "",
        "| change from the baseline | seeds | val acc % (mean) | min-max | vs baseline | train PFLOP |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        accs = [100 * d["val_acc_tta"] for d in done if d["row"] == name]
        pflop = statistics.mean(d["train_pflop"] for d in done if d["row"] == name)
        lines.append(f"| {name} | {len(accs)} | {statistics.mean(accs):.2f} | {min(accs):.2f}-{max(accs):.2f} | "
                     f"{statistics.mean(accs) - 100 * base:+.2f} | {pflop:.4f} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
