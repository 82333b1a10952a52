"""`budgetnet train` and `budgetnet evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from budgetnet.cli._app import app
from budgetnet.cli._budget_options import LIMIT_FLAGS
from budgetnet.cli._budget_options import PANEL as LIMITS
from budgetnet.cli._data_options import (
    DataPathOpt,
    DownloadCifar100Opt,
    DownloadOpt,
    LabelsOpt,
    NoCacheOpt,
    ResizeOpt,
    SplitSeedOpt,
    SubsetOpt,
    ValSizeOpt,
    check_downloads,
)
from budgetnet.cli._eval_options import BatchSizeOpt, DeviceOpt, JsonOpt, SplitOpt, TtaOpt, check_split
from budgetnet.cli._flags import GroupedHelp, Sets, command_flags, flag, flag_overrides, with_flags
from budgetnet.cli._launch import speaks_for_run, train_in_processes
from budgetnet.cli._model_options import PresetOption, model_flags
from budgetnet.errors import BudgetnetError

if TYPE_CHECKING:
    from budgetnet.config import RunConfig

RUN, TRAINING, OPTIMIZER, OUTPUT = "Run", "Training", "Optimizer and schedule", "Output"


@app.command(cls=GroupedHelp)
@model_flags
@with_flags(LIMIT_FLAGS)  # read from the context, as every train flag
def train(
    ctx: typer.Context,
    model: dict[str, Any],
    config: flag("--config", Path, RUN, help="Run config YAML (see configs/).") = None,
    recipe: flag("--recipe", str, RUN, help="A shipped recipe: flagship (default), long, cpu300.") = None,
    resume: flag("--resume", Path, RUN, help="Continue the run in this directory.") = None,
    out: flag("--out", Path, RUN, help="Run directory [default: runs/<name>-<time>].") = None,
    nproc: flag("--nproc", int, RUN, help="Data-parallel processes on this machine, started with torchrun: one per "
                                          "GPU, or CPU processes sharing the cores; --batch-size is the global "
                                          "batch. For several machines run torchrun yourself (README).") = None,
    name: flag("--name", str, RUN, Sets("name"), "Run name, used in the directory name.") = None,
    allow_over_budget: Annotated[bool, typer.Option("--allow-over-budget", rich_help_panel=LIMITS,
                                                    help="Train even if over the budget or another limit."),
                                 Sets("allow_over_budget")] = False,
    set_values: Annotated[list[str] | None, typer.Option(
        "--set", rich_help_panel=RUN, help="Any config field, e.g. --set optim.muon_lr=0.3 --set train.tta=final "
                                           "(YAML value); repeatable, applied last.")] = None,
    data: DataPathOpt = None,
    download: DownloadOpt = False,
    download_cifar100: DownloadCifar100Opt = False,
    labels: LabelsOpt = None,
    resize: ResizeOpt = None,
    val_size: ValSizeOpt = None,
    split_seed: SplitSeedOpt = None,
    subset: SubsetOpt = None,
    no_cache: NoCacheOpt = False,
    preset: PresetOption = None,
    epochs: flag("--epochs", int, TRAINING, Sets("train.epochs")) = None,
    batch_size: flag("--batch-size", int, TRAINING, Sets("train.batch_size")) = None,
    seed: flag("--seed", int, TRAINING, Sets("train.seed")) = None,
    label_smoothing: flag("--label-smoothing", float, TRAINING, Sets("train.label_smoothing")) = None,
    precision: flag("--precision", str, TRAINING, Sets("train.precision"), "auto, fp32, bf16, fp16") = None,
    device: flag("--device", str, TRAINING, Sets("train.device"), "auto, cpu, cuda, mps") = None,
    compile_model: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model.",
                                                       rich_help_panel=TRAINING), Sets("train.compile")] = None,
    threads: flag("--threads", int, TRAINING, Sets("train.threads"), "CPU threads [default: all].") = None,
    sync_bn: Annotated[bool | None, typer.Option("--sync-bn/--no-sync-bn", rich_help_panel=TRAINING,
                                                 help="With several processes: batch-norm statistics over the whole "
                                                      "batch (SyncBatchNorm, CUDA only)."), Sets("train.sync_bn")] = None,
    patience: flag("--patience", int, TRAINING, Sets("train.early_stopping.patience",
                                                        also={"train.early_stopping.monitor": "val_acc"}),
                      "Early stopping on val accuracy.") = None,
    on_nan: flag("--on-nan", str, TRAINING, Sets("train.on_nan"), "stop (default) or skip the batch") = None,
    checkpoint_every: flag("--checkpoint-every", int, TRAINING, Sets("train.checkpoint_every_steps"),
                              "Also checkpoint every N steps.") = None,
    max_train_seconds: flag("--max-train-seconds", float, TRAINING, Sets("train.max_train_seconds"),
                               "Stop after this much training time.") = None,
    time_budget: flag("--time-budget", str, TRAINING, Sets("train.time_budget_s"),
                         "Seconds of training to plan the run for (epochs and schedule are compressed to fit); "
                         "none lifts a recipe's budget.") = None,
    pflop: flag("--pflop", str, TRAINING, Sets("train.pflop_budget"),
                   "Training compute to plan the run for, in PFLOP (3 x forward FLOPs x images); with "
                   "--time-budget the tighter wins; none lifts a recipe's budget.") = None,
    optimizer: flag("--optimizer", str, OPTIMIZER, Sets("optim.name"),
                       "sgd, adam, adamw, adamax, adagrad, rmsprop, adadelta, asgd, muon (Muon on conv filters, "
                       "momentum SGD on the rest)") = None,
    lr: flag("--lr", float, OPTIMIZER, Sets("optim.lr"), "Peak learning rate.") = None,
    weight_decay: flag("--weight-decay", float, OPTIMIZER, Sets("optim.weight_decay")) = None,
    schedule: flag("--schedule", str, OPTIMIZER, Sets("schedule.name"),
                      "constant, step, cosine, cosine_restarts, plateau, cyclic, onecycle, linear") = None,
    log: Annotated[list[str] | None, typer.Option(
        "--log", rich_help_panel=OUTPUT, help="Experiment tracker fed every epoch: tensorboard (needs "
                                              "budgetnet[tracking]); repeatable."), Sets("train.log")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="One plain line per epoch.", rich_help_panel=OUTPUT)] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print summary.json at the end.",
                                           rich_help_panel=OUTPUT)] = False,
) -> None:
    """Train a budgeted ResNet: the flagship recipe unless a config or recipe is named; a model named replaces its model."""
    from budgetnet.config import build_config, read_yaml_mapping
    from budgetnet.train.engine import TrainingInterrupted
    from budgetnet.train.engine import train as run_training

    if nproc is not None and nproc < 1:
        raise BudgetnetError(f"--nproc {nproc} must be at least 1")
    if resume is not None:
        if config is not None or recipe is not None or config_overrides(ctx.params):
            raise BudgetnetError("--resume continues a run with its saved config; drop the other options")
        saved = resume / "config.yaml"
        if not saved.is_file():
            raise BudgetnetError(f"{resume} is not a budgetnet run directory (no config.yaml)")
        cfg = build_config(read_yaml_mapping(saved), source=str(saved))
        out = resume
    else:
        cfg = options_config(ctx.params)
    if nproc is not None and nproc > 1:
        options = [*(["--quiet"] if quiet else []), *(["--json"] if json_out else [])]
        raise typer.Exit(train_in_processes(nproc, cfg, resume, out, options))
    try:
        result = run_training(cfg, out, resume=resume is not None, quiet=quiet)
    except TrainingInterrupted as exc:
        if speaks_for_run():
            typer.echo(f"budgetnet: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if not speaks_for_run():
        return
    s = result.summary
    if json_out:
        typer.echo(json.dumps({"run_dir": str(result.run_dir), **s}, default=str))
        return
    best = f"{100 * s['best_val_acc']:.2f}% (epoch {s['best_epoch']})" if s["best_val_acc"] is not None else "n/a (no validation split)"
    typer.echo(
        f"run {result.run_dir}: {s['params']:,} params, best val acc {best}, "
        f"{s['train_seconds']:.1f}s training ({s['train_pflop']:.4g} PFLOP), {s['wall_seconds']:.1f}s wall"
        + (f", {s['steps_run']}/{s['planned_steps']} steps planned for a {s['time_budget_s']:g}s budget"
           if s["time_budget_s"] else "")
    )


def config_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The run-config overrides that the train command's options `values` (by parameter name,
    as in its context) set: each flag's `Sets` marker, then `--set`; options not given are
    left out."""
    check_downloads(values.get("download"), values.get("download_cifar100"))
    overrides = flag_overrides(command_flags(train), values)
    model = overrides.get("model", {})
    if "preset" not in model and {"blocks", "channels"} <= model.keys():
        overrides["model"] = {"preset": None, **model}  # a fresh spec, not an edit of the recipe's model
    return _with_set_values(overrides, values.get("set_values") or [])


def _with_set_values(overrides: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """`--set section.key=value` pairs laid over the other overrides; the value is read as YAML
    (numbers, booleans, lists, null), and the schema validates the result like any config."""
    import yaml

    from budgetnet.config import deep_merge

    for text in assignments:
        path, sep, raw = text.partition("=")
        keys = path.strip().split(".")
        if not sep or not all(keys):
            raise BudgetnetError(f"--set {text!r} must look like section.key=value, e.g. --set optim.lr=0.1")
        try:
            value: Any = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise BudgetnetError(f"--set {text!r}: the value is not valid YAML") from None
        for key in reversed(keys):
            value = {key: value}
        overrides = deep_merge(overrides, value)
    return overrides


def options_config(p: dict[str, Any]) -> RunConfig:
    """The run config of the train command's options `p`: recipe <- --config <- flags; data is
    required (a path, or --download)."""
    from budgetnet.config import load_config

    cfg = load_config(p["config"], config_overrides(p), recipe=p["recipe"])
    if cfg.data.path is None and not cfg.data.download:
        raise BudgetnetError("no data: pass --data PATH (or --download to fetch CIFAR-10)")
    return cfg


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run directory (uses its best.pt), a checkpoint file, an ensemble "
                                              "manifest (.json) or a .onnx written by budgetnet export.")],
    data: DataPathOpt = None,
    split: SplitOpt = "val",
    tta: TtaOpt = False,
    batch_size: BatchSizeOpt = 1000,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Accuracy, loss, per-class accuracy and confusion matrix of a trained model or ensemble."""
    from budgetnet.ensemble import evaluate_manifest, is_manifest
    from budgetnet.evaluate import evaluate_checkpoint, find_checkpoint, plot_confusion

    check_split(split)
    if is_manifest(run):
        evaluation = evaluate_manifest(run, data_path=data, split=split, tta=tta, batch_size=batch_size, device=device)
        result, info, out_dir = evaluation.result, {"checkpoint": str(run), **evaluation.to_dict()}, run.parent
    else:
        checkpoint = find_checkpoint(run)
        options = {"data_path": data, "split": split, "tta": tta, "batch_size": batch_size}
        if checkpoint.suffix.lower() == ".onnx":  # run by onnxruntime, on the CPU
            from budgetnet.deploy import evaluate_onnx

            result, info = evaluate_onnx(checkpoint, **options)
        else:
            result, info = evaluate_checkpoint(checkpoint, device=device, **options)
        out_dir = checkpoint.parent
    png = out_dir / f"confusion-{split}{'-tta' if tta else ''}.png"
    plot_confusion(png, result, f"{split} accuracy {100 * result.accuracy:.2f}%")
    report = {**info, **result.to_dict(), "confusion_png": str(png)}
    if json_out:
        typer.echo(json.dumps(report))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    console.print(f"{info['checkpoint']} on {split}{' with TTA' if tta else ''}: "
                  f"accuracy {100 * result.accuracy:.2f}%, loss {result.loss:.4f}, {report['images']} images")
    table = Table("#", "class", "accuracy", *[str(i) for i in range(len(result.classes))],
                  title="per-class accuracy; confusion matrix (rows: true class, columns: predicted #)")
    for i, (cls, acc) in enumerate(zip(result.classes, result.per_class_accuracy)):
        table.add_row(str(i), cls, f"{100 * acc:.1f}%", *[str(int(v)) for v in result.confusion[i]])
    console.print(table)
    console.print(f"confusion matrix saved to {png}")
