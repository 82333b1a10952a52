"""Data-parallel training: the processes of one run (its ranks) as the training loop sees them.

One process per device, started by torchrun (`torchrun --nproc-per-node N -m budgetnet train`,
or `budgetnet train --nproc N`, which starts torchrun on this machine). torchrun's environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) says where a process stands;
`process_group` joins the group: NCCL with one CUDA device per local rank, gloo on CPUs. A
process started any other way is a run of one, and every method here costs nothing.

What the ranks share, and how:
- the model: DistributedDataParallel averages the gradients during backward, so every rank
  takes the same optimizer step (Muon's included) on the whole batch's gradient;
- the batches: every rank draws the same permutation and augmentation of each epoch from
  (seed, epoch) and trains on its own equal part of every batch (`DeviceLoader(shard=...)`),
  so the global batch and the epoch are one process's;
- decisions: whatever depends on a clock, a signal or a file (the time plan, stopping, the run
  directory, the checkpoint resumed from) is made on rank 0 and sent to all (`from_main`) or
  agreed by all (`maxima`), so no rank waits in a collective the others skipped;
- the run directory: rank 0 alone writes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from budgetnet.errors import BudgetnetError
from budgetnet.runtime import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes, and the collectives the loop uses."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run directory and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def from_main(self, produce: Callable[[], T]) -> T:
        """What `produce()` returns on rank 0, on every rank; a BudgetnetError it raises is raised
        on every rank, so all stop together. Only rank 0 calls `produce`."""
        if not self.distributed:
            return produce()
        outcome: list[Any] = [None]
        raised: BudgetnetError | None = None
        if self.is_main:
            try:
                outcome[0] = (produce(), None)
            except BudgetnetError as exc:
                raised, outcome[0] = exc, (None, str(exc))
        dist.broadcast_object_list(outcome, src=0)
        value, error = outcome[0]
        if error is not None:
            raise raised or BudgetnetError(error)
        return value

    def maxima(self, values: Sequence[int]) -> list[int]:
        """Each of `values` at its largest over the ranks: one rank's signal or lapsed time limit
        stops them all (a host sync)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def summed(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks (in place)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def gathered(self, tensor: torch.Tensor) -> torch.Tensor:
        """The ranks' equal-length `tensor`s end to end, in rank order (the whole batch's values
        from each rank's part of it)."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def whole_batch(self, correct: torch.Tensor, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The correct count and mean loss of the whole batch from this rank's of its part (the
        parts are equal): every rank then records, and decides on a non-finite loss, alike."""
        if not self.distributed:
            return correct, loss
        both = self.summed(torch.stack([correct.to(loss.dtype), loss]))
        return both[0], both[1] / self.world_size

    def copy_from_main(self, module: nn.Module) -> None:
        """Every parameter and buffer of `module` set to rank 0's. Gradients keep the trained
        parameters equal, but not frozen ones set outside training (a whitening stem's) nor the
        batch-norm statistics, which each rank gathers from its own part of the batch."""
        if not self.distributed:
            return
        tensors = list(module.state_dict().values())
        for dtype in dict.fromkeys(t.dtype for t in tensors):  # in the same order on every rank
            same = [t for t in tensors if t.dtype == dtype]
            flat = torch.cat([t.reshape(-1) for t in same])
            dist.broadcast(flat, src=0)
            for tensor, part in zip(same, flat.split([t.numel() for t in same])):
                tensor.copy_(part.view(tensor.shape))

    def data_parallel(self, model: nn.Module, sync_bn: bool) -> DistributedDataParallel | None:
        """`model` wrapped for data-parallel training, its batch norms turned into SyncBatchNorm
        first (in place) with `sync_bn`; None for a run of one process."""
        if not self.distributed:
            return None
        if sync_bn:
            if self.device.type != "cuda":
                raise BudgetnetError("train.sync_bn needs CUDA devices (SyncBatchNorm does not run on CPUs); "
                                     "drop it, or train on GPUs")
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)


@contextmanager
def process_group(device_name: str) -> Iterator[Ranks]:
    """This process's `Ranks`: of the process group already started, or of the one torchrun's
    environment describes (started here and ended on leaving: NCCL for CUDA, gloo for CPUs),
    or a run of one process on `resolve_device(device_name)`."""
    device = resolve_device(device_name)
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Ranks(device)
        return
    if device.type == "mps":
        raise BudgetnetError("data-parallel training runs on CUDA devices or CPUs, not mps; pass --device cuda or cpu")
    if device.type == "cuda":
        local_rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= count:
            raise BudgetnetError(f"local rank {local_rank} has no CUDA device of its own (this machine has {count}); "
                                 f"start at most {count} processes per machine")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    try:
        yield Ranks(device, dist.get_rank(), dist.get_world_size())
        if started:
            # Leave together: in full test-suite runs a gloo rank tearing down while its peer
            # still held the connection aborted at exit after training had finished
            # ("terminate called without an active exception", exit -6). Not on an error: the
            # other ranks may be gone.
            dist.barrier()
    finally:
        if started:
            dist.destroy_process_group()
