"""Data options shared by every command that reads a dataset (`data info`, `train`, `evaluate`).

Value options default to None, meaning "not given": `data_overrides` returns only what the user
set, so a command can lay the flags over a config file's `data:` section (or over `DataConfig`'s
defaults). Importing this module stays cheap: it does not import torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from budgetnet.errors import BudgetnetError

DataPathOpt = Annotated[str | None, typer.Option(
    "--data", metavar="PATH",
    help="Dataset: a cifar-10-batches-py folder or cifar-10-python.tar.gz, an image folder or "
         ".zip (<split>/<class>/<image> or <class>/<image>), or an .npz with x/y arrays.")]
DownloadOpt = Annotated[bool, typer.Option(
    "--download", help="Fetch CIFAR-10 (python version) into the --data folder if it is not "
                       "there yet (default folder: the cache).")]
DownloadCifar100Opt = Annotated[bool, typer.Option(
    "--download-cifar100", help="Fetch CIFAR-100 (python version) the same way.")]
LabelsOpt = Annotated[Literal["fine", "coarse"] | None, typer.Option(
    "--labels", help="CIFAR-100's labels: fine (100 classes) or coarse (its 20 superclasses) "
                     "[default: fine]; other datasets have one set.")]
ResizeOpt = Annotated[Literal["stretch", "center-crop"] | None, typer.Option(
    "--resize", help="How to fit images whose size differs from the input size; without it "
                     "they are an error.")]
InputSizeOpt = Annotated[int | None, typer.Option(
    "--input-size", min=1, help="Image side length the model takes [default: the images' own].")]
ValSizeOpt = Annotated[int | None, typer.Option(
    "--val-size", min=0, help="Stratified validation images carved from train; 0 trains on "
                              "everything [default: 5000].")]
SplitSeedOpt = Annotated[int | None, typer.Option(
    "--split-seed", help="Seed of the validation split and of --subset [default: 0].")]
SubsetOpt = Annotated[int | None, typer.Option(
    "--subset", min=1, help="Use a stratified sample of N training images (the validation "
                            "split is then carved from it), for quick runs.")]
NoCacheOpt = Annotated[bool, typer.Option(
    "--no-cache", help="Decode the dataset again instead of using (or filling) the cache.")]


def data_overrides(
    data: str | None = None,
    download: bool = False,
    resize: str | None = None,
    input_size: int | None = None,
    val_size: int | None = None,
    split_seed: int | None = None,
    subset: int | None = None,
    no_cache: bool = False,
    labels: str | None = None,
    download_cifar100: bool = False,
) -> dict[str, Any]:
    """The `DataConfig` fields set by the options above; options not given are left out."""
    values = {"path": data, "resize": resize, "input_size": input_size, "val_size": val_size,
              "split_seed": split_seed, "subset": subset, "labels": labels}
    out: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
    if download and download_cifar100:
        raise BudgetnetError("give --download (CIFAR-10) or --download-cifar100, not both")
    if download or download_cifar100:
        out["download"] = "cifar100" if download_cifar100 else True
    if no_cache:
        out["cache"] = False
    return out
