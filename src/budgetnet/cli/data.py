"""`budgetnet data` commands: info, clear-cache."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from budgetnet.cli._app import app
from budgetnet.cli._data_options import (
    DataPathOpt,
    DownloadCifar100Opt,
    DownloadOpt,
    InputSizeOpt,
    LabelsOpt,
    NoCacheOpt,
    ResizeOpt,
    SplitSeedOpt,
    SubsetOpt,
    ValSizeOpt,
    data_overrides,
)

data_app = typer.Typer(help="Inspect datasets and manage the decoded-image cache.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("info")
def info(
    data: DataPathOpt = None,
    download: DownloadOpt = False,
    download_cifar100: DownloadCifar100Opt = False,
    labels: LabelsOpt = None,
    resize: ResizeOpt = None,
    input_size: InputSizeOpt = None,
    val_size: ValSizeOpt = None,
    split_seed: SplitSeedOpt = None,
    subset: SubsetOpt = None,
    no_cache: NoCacheOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Images per split and class, image size, which labels (CIFAR-100), mean/std, the cache entry."""
    # Imported here so that `budgetnet --help` and other commands do not pay for torch.
    from budgetnet.data import DataConfig, open_source, prepare_data

    cfg = DataConfig(**data_overrides(data, download, resize, input_size, val_size, split_seed,
                                      subset, no_cache, labels, download_cifar100))
    present = ()
    if cfg.path is not None:  # with no path, prepare_data downloads (or says what is missing)
        present = open_source(cfg.path, resize=cfg.resize, input_size=cfg.input_size,
                              labels=cfg.labels, download=cfg.download).splits
    wanted = (("train", "val") if "train" in present or not present else ()) + \
        (("test",) if "test" in present else ())
    prepared = prepare_data(cfg, "cpu", splits=wanted)
    report = _report(prepared.info, prepared.mean, prepared.std, cfg.val_size, cfg.subset)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print(report)


def _report(info: dict[str, Any], mean: Any, std: Any, val_size: int, subset: int | None
            ) -> dict[str, Any]:
    def split_summary(per_class: dict[str, int]) -> dict[str, Any]:
        return {"images": sum(per_class.values()), "per_class": per_class}

    return {
        "source": info["source"],
        "format": info["format"],
        "labels": info["labels"],
        "content_hash": info["content_hash"],
        "image_size": info["image_size"],
        "classes": info["classes"],
        "images": sum(sum(c.values()) for c in info["source_counts"].values()),
        "subset": subset,
        "splits": {k: split_summary(v) for k, v in info["source_counts"].items()},
        "prepared": {k: split_summary(v) for k, v in info["counts"].items()},
        "val_size": val_size if "val" in info["counts"] else 0,
        "mean": list(mean) if mean is not None else None,
        "std": list(std) if std is not None else None,
        "cache": info["cache"],
        "seconds": info["seconds"],
    }


def _print(report: dict[str, Any]) -> None:
    console = Console()
    h, w = report["image_size"]
    console.print(f"source  {report['source']} ({report['format']})")
    read = " (a stratified --subset of the training images)" if report["subset"] else ""
    console.print(f"images  {report['images']:,} of {w}x{h} RGB, {len(report['classes'])} "
                  f"classes{read}")
    labels = report["labels"]
    if labels is not None:
        other = {"fine": "coarse for the 20 superclasses", "coarse": "fine for the 100 classes"}[labels]
        console.print(f"labels  {labels}: {len(report['classes'])} classes, named by the meta file's "
                      f"{labels}_label_names (--labels {other})")
    table = Table("class", *report["splits"], *(f"-> {k}" for k in report["prepared"]))
    columns = [*report["splits"].values(), *report["prepared"].values()]
    for cls in report["classes"]:
        table.add_row(cls, *(f"{c['per_class'][cls]:,}" for c in columns))
    table.add_row("total", *(f"{c['images']:,}" for c in columns), style="bold")
    console.print(table)
    if report["mean"] is not None:
        console.print("mean    " + " ".join(f"{v:.4f}" for v in report["mean"])
                      + "   (train part, [0,1] units)")
        console.print("std     " + " ".join(f"{v:.4f}" for v in report["std"]))
    cache = report["cache"]
    if not cache["used"]:
        console.print("cache   not used (--no-cache)")
    else:
        state = "served from cache" if cache["from_cache"] else "decoded now and cached"
        paths = [p for p in cache["paths"].values() if p] or [cache["dir"]]
        console.print(f"cache   {state}: {', '.join(paths)}")
    console.print(f"time    {report['seconds']:.2f} s")


@data_app.command("clear-cache")
def clear_cache_command(
    cache_dir: Annotated[str | None, typer.Option(
        "--cache-dir", help="Cache folder [default: $BUDGETNET_CACHE or ~/.cache/budgetnet].")]
    = None,
) -> None:
    """Delete all decoded arrays from the cache (downloaded datasets are kept)."""
    from budgetnet.data import clear_cache
    from budgetnet.data.cache import default_cache_dir

    freed = clear_cache(cache_dir)
    where = cache_dir or default_cache_dir()
    typer.echo(f"removed {freed / 1e6:.1f} MB of cached arrays from {where}")
