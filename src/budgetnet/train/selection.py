"""Data selection: which training images an epoch trains on, from the loss each had when it
was last trained (InfoBatch: Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased
Dynamic Data Pruning", ICLR 2024).

At the start of each epoch, every image whose last training loss is below the mean of all the
images' sits the epoch out with probability `prune`; the well-learned images that stay have
their loss scaled by 1 / (1 - prune), so that the epoch's expected gradient is the full set's.
From `until` of the planned steps on, every image trains at weight 1 (as in the paper: the
rescaled gradient's extra variance stays out of the end of the annealing). An image not trained
yet counts as hard, so the first epoch trains on everything.

budgetnet holds the compute fixed, not the data: an epoch keeps its number of steps and draws
them from the images kept (each kept image once in a random order, then again in a fresh
order, until the epoch's steps are filled), so the selection spends the same FLOPs on fewer,
harder images instead of ending the run sooner. The losses are the training step's own, so
the selection costs no forward pass of its own and adds nothing to `train_pflop`.

What an epoch trains on is a pure function of (seed, epoch, the losses as they stood when the
epoch began); the checkpoint holds both the current losses and those, so a run resumed mid-epoch
draws the batches an uninterrupted run would have.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from budgetnet.data.loader import epoch_seed

_STREAM = 1  # the selection's random stream of an epoch; the loader's shuffle is stream 0


class DataSelectionConfig(BaseModel):
    """InfoBatch's two knobs, at the paper's CIFAR-10 values."""

    model_config = ConfigDict(extra="forbid")

    prune: float = Field(0.5, gt=0, lt=1, description="probability that an image whose last loss is below the "
                                                     "mean sits an epoch out")
    until: float = Field(0.875, gt=0, le=1, description="fraction of the planned steps after which every image "
                                                        "trains, at weight 1")


class DataSelection:
    """The last training loss of every training image, and the epoch's selection from them."""

    def __init__(self, cfg: DataSelectionConfig, images: int, seed: int, device: torch.device) -> None:
        self.cfg, self.seed = cfg, seed
        self.losses = torch.full((images,), math.nan, device=device)  # NaN: not trained yet
        self.epoch_losses = self.losses.clone()  # as they stood when the current epoch began
        self.epoch_start = 0.0  # fraction of the planned steps done when it began
        self.weights = torch.ones(images, device=device)  # the current epoch's loss weight per image

    def begin_epoch(self, fraction_done: float) -> None:
        """A new epoch begins, `fraction_done` of the planned steps in (not called for the rest
        of an epoch a resume continues: that keeps the selection it began with)."""
        self.epoch_losses = self.losses.clone()
        self.epoch_start = fraction_done

    def epoch_subset(self, epoch: int) -> torch.Tensor | None:
        """The indices of the images epoch `epoch` trains on (None: all of them), and their
        `weights` set for it."""
        self.weights.fill_(1.0)
        losses = self.epoch_losses
        trained = ~losses.isnan()
        if self.epoch_start >= self.cfg.until or not bool(trained.any()):
            return None
        generator = torch.Generator(device=losses.device)
        generator.manual_seed(epoch_seed(self.seed, epoch, _STREAM))
        easy = trained & (losses < losses[trained].mean())
        draw = torch.rand(len(losses), generator=generator, device=losses.device)
        out = easy & (draw < self.cfg.prune)
        self.weights[easy & ~out] = 1 / (1 - self.cfg.prune)
        return (~out).nonzero().squeeze(1)

    def record(self, index: torch.Tensor, losses: torch.Tensor) -> None:
        """The training losses of images `index` at the step just taken."""
        self.losses[index] = losses.detach().float()

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses, "epoch_losses": self.epoch_losses, "epoch_start": self.epoch_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses.copy_(state["losses"])
        self.epoch_losses = state["epoch_losses"].to(self.losses.device).clone()
        self.epoch_start = float(state["epoch_start"])
