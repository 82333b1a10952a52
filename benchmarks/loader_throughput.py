"""Augmented-batch throughput: DeviceLoader against a classic per-sample DataLoader.

Both produce normalized float batches of 512 with pad-4 random crop, horizontal flip and a
12-pixel cutout. The baseline is the usual per-image pipeline (numpy pad + crop + flip + cutout,
ToTensor, normalize) in a torch DataLoader with 2 workers. Not a test; run:

    .venv/bin/python benchmarks/loader_throughput.py [--data PATH] [--batches 40] [--device cpu]
        [--threads N]

The last line prints the speed ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from budgetnet.data import AugmentConfig, BatchAugment, DataConfig, DeviceLoader, prepare_data
from budgetnet.data.augment import CropConfig, CutoutConfig, FlipConfig

BATCH, PAD, CUTOUT = 512, 4, 12
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PerSampleDataset(Dataset):
    """The per-image way: numpy augmentation, ToTensor, normalize, one sample at a time."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y  # NHWC uint8
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = np.pad(self.x[i], ((PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
        top, left = np.random.randint(0, 2 * PAD + 1, size=2)
        img = img[top:top + 32, left:left + 32]
        if np.random.rand() < 0.5:
            img = img[:, ::-1]
        img = np.ascontiguousarray(img)
        cy, cx = np.random.randint(0, 32, size=2)
        img[max(0, cy - CUTOUT // 2):cy + CUTOUT // 2, max(0, cx - CUTOUT // 2):cx + CUTOUT // 2] \
            = 128
        chw = torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255)  # ToTensor
        return (chw - self.mean) / self.std, int(self.y[i])


def _rate(batches, n: int, sync) -> float:
    """Batches per second over `n` batches, after one warm-up batch."""
    it = iter(batches)
    next(it)
    start = time.perf_counter()
    for _ in range(n):
        x, _ = next(it)
    sync(x)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset path (default: 50,000 random 32x32 images)")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per loader")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int,
                        help="torch threads of the main process [default: torch's]. While "
                             "another process kept both cores busy, 2 threads ran the "
                             "DeviceLoader ~10x slower than 1 (idle OpenMP threads spin; "
                             "OMP_WAIT_POLICY=PASSIVE also cures it)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.data:
        data = prepare_data(DataConfig(path=args.data, val_size=0), "cpu")
        x_nchw, y = data.train
    else:
        g = torch.Generator().manual_seed(0)
        x_nchw = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (50_000,), generator=g)
    n = min(args.batches, len(y) // BATCH - 1)

    def sync(x: torch.Tensor) -> None:
        if x.is_cuda:
            torch.cuda.synchronize()

    augment = BatchAugment(AugmentConfig(crop=CropConfig(padding=PAD), flip=FlipConfig(),
                                         cutout=CutoutConfig(size=CUTOUT)))
    device_loader = DeviceLoader(x_nchw.to(device), y.to(device), BATCH, shuffle=True,
                                 drop_last=True, mean=MEAN, std=STD, augment=augment)
    fast = _rate(device_loader, n, sync)

    dataset = PerSampleDataset(x_nchw.permute(0, 2, 3, 1).numpy(), y.numpy())
    per_sample = DataLoader(dataset, BATCH, shuffle=True, drop_last=True, num_workers=2,
                            persistent_workers=True, pin_memory=device.type == "cuda")
    slow = _rate(((x.to(device, non_blocking=True), y) for x, y in per_sample), n, sync)

    print(f"device: {device}, batch {BATCH}, crop(pad {PAD}) + flip + cutout({CUTOUT}), "
          f"{n} timed batches each, torch threads {torch.get_num_threads()}")
    print(f"DeviceLoader:             {fast:8.1f} batches/s  ({fast * BATCH:10,.0f} images/s)")
    print(f"DataLoader (2 workers):   {slow:8.1f} batches/s  ({slow * BATCH:10,.0f} images/s)")
    print(f"ratio DeviceLoader / DataLoader: {fast / slow:.1f}x")


if __name__ == "__main__":
    main()
