"""Shared fixtures: an isolated cache for every test, and small synthetic datasets in every
format budgetnet reads (each made in the test's tmp_path, never touching the network)."""

from __future__ import annotations

import importlib.util
import io
import pickle
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from budgetnet.config import RunConfig, deep_merge, load_config

CLASSES = ["cat", "dog", "frog"]


def load_benchmark(name: str) -> ModuleType:
    """The script benchmarks/<name>.py as a module (benchmarks/ is not a package), registered in
    sys.modules so that its dataclasses resolve."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                   ) -> Path:
    """Point $BUDGETNET_CACHE at a fresh folder, so no test reads or fills ~/.cache."""
    path = tmp_path_factory.mktemp("budgetnet-cache")
    monkeypatch.setenv("BUDGETNET_CACHE", str(path))
    return path


@dataclass(frozen=True)
class Synthetic:
    """Images and labels per split; x uint8 (N, H, W, 3), y int64, classes by name."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    classes: list[str]


def make_synthetic(per_class: dict[str, int], classes: list[str] = CLASSES, size: int = 32,
                   seed: int = 0) -> Synthetic:
    """Images whose mean colour encodes the class, so a mix-up of labels is detectable."""
    rng = np.random.default_rng(seed)
    xs, ys = {}, {}
    for split, n in per_class.items():
        y = np.repeat(np.arange(len(classes)), n)
        noise = rng.integers(0, 40, (len(y), size, size, 3))
        xs[split] = (noise + 60 * y[:, None, None, None]).astype(np.uint8)
        ys[split] = y.astype(np.int64)
    return Synthetic(xs, ys, classes)


@pytest.fixture
def synthetic() -> Synthetic:
    """8 training and 4 test images per class, 32x32."""
    return make_synthetic({"train": 8, "test": 4})


def write_image_folder(root: Path, data: Synthetic, fmt: str = "png",
                       splits: tuple[str, ...] = ("train", "test")) -> Path:
    """<root>/<split>/<class>/<i>.<fmt>, lossless by default so pixels can be compared."""
    for split in splits:
        for i, (img, label) in enumerate(zip(data.x[split], data.y[split])):
            path = root / split / data.classes[label] / f"{i:04d}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
    return root


def zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    """Zip `folder`'s files (and folders, as zip tools do) under `prefix`."""
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted(folder.rglob("*")):
            name = prefix + path.relative_to(folder).as_posix()
            if path.is_dir():
                zf.writestr(name + "/", b"")
            else:
                zf.write(path, name)
    return zip_path


def _pickle_batch(x: np.ndarray, y: np.ndarray) -> bytes:
    # Protocol 2 with str keys, as CIFAR's own batches look when read with encoding="latin1".
    data = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    return pickle.dumps({"batch_label": "synthetic", "data": data, "labels": y.tolist(),
                         "filenames": [f"{i}.png" for i in range(len(y))]}, protocol=2)


def write_cifar_folder(root: Path, data: Synthetic, splits: tuple[str, ...] = ("train", "test")
                       ) -> Path:
    """<root>/cifar-10-batches-py with data_batch_1..5 (train split in 5 parts) and test_batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": data.classes, "num_vis": 3072}, protocol=2))
    if "train" in splits:
        parts = np.array_split(np.arange(len(data.y["train"])), 5)
        for i, idx in enumerate(parts, 1):
            (folder / f"data_batch_{i}").write_bytes(
                _pickle_batch(data.x["train"][idx], data.y["train"][idx]))
    if "test" in splits:
        (folder / "test_batch").write_bytes(_pickle_batch(data.x["test"], data.y["test"]))
    return folder


def write_cifar_archive(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive


def write_npz(path: Path, data: Synthetic) -> Path:
    np.savez(path, x=data.x["train"], y=data.y["train"], x_test=data.x["test"],
             y_test=data.y["test"], classes=np.array(data.classes))
    return path


@pytest.fixture
def image_folder(tmp_path: Path, synthetic: Synthetic) -> Path:
    return write_image_folder(tmp_path / "images", synthetic)


@pytest.fixture
def image_zip(tmp_path: Path, image_folder: Path) -> Path:
    """The image folder zipped under one wrapper folder, like the shared CIFAR-10 zip."""
    return zip_folder(image_folder, tmp_path / "images.zip", prefix="wrapper/")


@pytest.fixture
def cifar_folder(tmp_path: Path, synthetic: Synthetic) -> Path:
    return write_cifar_folder(tmp_path / "cifar", synthetic)


@pytest.fixture
def cifar_archive(tmp_path: Path, cifar_folder: Path) -> Path:
    return write_cifar_archive(cifar_folder, tmp_path / "cifar-10-python.tar.gz")


@pytest.fixture
def npz_file(tmp_path: Path, synthetic: Synthetic) -> Path:
    return write_npz(tmp_path / "data.npz", synthetic)


def encode(img: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def rewrite_checkpoint(path: Path, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Rewrite a checkpoint file's payload as `edit` returns it, behind a valid header: how
    tests make the layouts earlier budgetnet versions wrote."""
    import hashlib

    import torch

    raw = path.read_bytes()
    start = raw.index(b"\n") + 1
    payload = edit(torch.load(io.BytesIO(raw[start:]), weights_only=True))
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    path.write_bytes(f"BUDGETNET-CKPT v1 sha256={hashlib.sha256(data).hexdigest()} len={len(data)}\n".encode() + data)


@pytest.fixture(scope="module")
def search_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 16x16 images of 3 classes in an .npz: the searches' dataset (a trial trains in about a second)."""
    synthetic = make_synthetic({"train": 100}, size=16)
    path = tmp_path_factory.mktemp("search-data") / "tiny.npz"
    np.savez(path, x=synthetic.x["train"], y=synthetic.y["train"], classes=np.array(synthetic.classes))
    return path


def write_noisy_npz(path: Path, n: int, seed: int) -> Path:
    """`n` 16x16 images of 3 classes (a, b, c) whose brightness differs by only 10/255 under
    0-80 of noise: learnable, but not in a step, so training curves have something to show."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 3)
    x = (rng.integers(0, 80, (n, 16, 16, 3)) + 10 * y[:, None, None, None]).astype(np.uint8)
    np.savez(path, x=x, y=y, classes=np.array(["a", "b", "c"]))
    return path


def train_tiny(data: Path, out: Path, *options: str, epochs: int = 2) -> Path:
    """A tiny run (one 8-channel block, 3 classes, fp32, one thread on the CPU, no progressive
    crops) in `out`; `options` add to or override the defaults (later flags win)."""
    from budgetnet.cli import main

    code = main(["train", "--data", str(data), "--blocks", "1", "--channels", "8", "--classes", "3",
                 "--epochs", str(epochs), "--batch-size", "16", "--optimizer", "sgd", "--lr", "0.1", "--precision", "fp32",
                 "--threads", "1", "--device", "cpu", "--set", "train.tta=true", "--set", "train.progressive=[]",
                 "--quiet", "--out", str(out),
                 *options])
    assert code == 0
    return out


def tiny_run_config(dataset: Path, **sections: dict) -> RunConfig:
    """A 1,443-parameter ResNet on 16x16 images of `dataset` (3 classes), 2 epochs of batch 30 on one
    CPU thread in fp32, without TTA, a time budget or progressive crops, 60 validation images: a run
    takes about a second. `sections` (section -> fields) are laid over it."""
    base = {
        "data": {"path": str(dataset), "input_size": 16, "val_size": 60},
        "model": {"preset": None, "blocks": [1], "channels": [8], "classes": 3, "input_size": 16},
        # Nesterov SGD with a warm-up: tiny runs that learn, but not perfectly in two epochs.
        "optim": {"name": "sgd", "lr": 0.1, "nesterov": True, "no_decay_bn_bias": True},
        "schedule": {"warmup_epochs": 1.0},
        "train": {"epochs": 2, "batch_size": 30, "precision": "fp32", "threads": 1, "device": "cpu", "tta": False,
                  "time_budget_s": None, "progressive": []},
    }
    return load_config(overrides=deep_merge(base, sections))
