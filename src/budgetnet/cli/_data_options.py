"""Data options shared by every command that reads a dataset (`data info`, `train`, `evaluate`).

Value options default to None, meaning "not given": `data_overrides` returns only what the user
set, so a command can lay the flags over a config file's `data:` section (or over `DataConfig`'s
defaults). Each option says which `DataConfig` field it sets (`Sets`, checked against the
schema by tests/test_cli_flags.py). Importing this module stays cheap: it does not import torch.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

import typer

from budgetnet.cli._flags import Sets, flag_overrides
from budgetnet.errors import BudgetnetError

PANEL = "Data"

DataPathOpt = Annotated[str | None, typer.Option(
    "--data", metavar="PATH", rich_help_panel=PANEL,
    help="Dataset: a cifar-10-batches-py folder or cifar-10-python.tar.gz, an image folder or "
         ".zip (<split>/<class>/<image> or <class>/<image>), or an .npz with x/y arrays."), Sets("data.path")]
DownloadOpt = Annotated[bool, typer.Option(
    "--download", rich_help_panel=PANEL, help="Fetch CIFAR-10 (python version) into the --data folder if it is "
                                              "not there yet (default folder: the cache)."), Sets("data.download")]
DownloadCifar100Opt = Annotated[bool, typer.Option(
    "--download-cifar100", rich_help_panel=PANEL, help="Fetch CIFAR-100 (python version) the same way."),
    Sets(also={"data.download": "cifar100"})]
LabelsOpt = Annotated[Literal["fine", "coarse"] | None, typer.Option(
    "--labels", rich_help_panel=PANEL, help="CIFAR-100's labels: fine (100 classes) or coarse (its 20 "
                                            "superclasses) [default: fine]; other datasets have one set."),
    Sets("data.labels")]
ResizeOpt = Annotated[Literal["stretch", "center-crop"] | None, typer.Option(
    "--resize", rich_help_panel=PANEL, help="How to fit images whose size differs from the input size; without it "
                                            "they are an error."), Sets("data.resize")]
InputSizeOpt = Annotated[int | None, typer.Option(
    "--input-size", min=1, rich_help_panel=PANEL, help="Image side length the model takes [default: the images' "
                                                       "own]."),
    Sets("data.input_size")]
ValSizeOpt = Annotated[int | None, typer.Option(
    "--val-size", min=0, rich_help_panel=PANEL, help="Stratified validation images carved from train; 0 trains on "
                                                     "everything [default: 5000]."), Sets("data.val_size")]
SplitSeedOpt = Annotated[int | None, typer.Option(
    "--split-seed", rich_help_panel=PANEL, help="Seed of the validation split and of --subset [default: 0]."),
    Sets("data.split_seed")]
SubsetOpt = Annotated[int | None, typer.Option(
    "--subset", min=1, rich_help_panel=PANEL, help="Use a stratified sample of N training images (the validation "
                                                   "split is then carved from it), for quick runs."), Sets("data.subset")]
NoCacheOpt = Annotated[bool, typer.Option(
    "--no-cache", rich_help_panel=PANEL, help="Decode the dataset again instead of using (or filling) the cache."),
    Sets("data.cache", parse=operator.not_)]

# Parameter name -> option, in `data_overrides`' order.
DATA_FLAGS: dict[str, Any] = {
    "data": DataPathOpt, "download": DownloadOpt, "resize": ResizeOpt, "input_size": InputSizeOpt,
    "val_size": ValSizeOpt, "split_seed": SplitSeedOpt, "subset": SubsetOpt, "no_cache": NoCacheOpt,
    "labels": LabelsOpt, "download_cifar100": DownloadCifar100Opt,
}


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
    check_downloads(download, download_cifar100)
    given = locals()  # exactly the parameters, named as in DATA_FLAGS
    return flag_overrides(DATA_FLAGS, given).get("data", {})


def check_downloads(download: bool | None, download_cifar100: bool | None) -> None:
    """Both download flags name a dataset to fetch: one of them at most."""
    if download and download_cifar100:
        raise BudgetnetError("give --download (CIFAR-10) or --download-cifar100, not both")
