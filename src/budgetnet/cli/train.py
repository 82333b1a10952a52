"""`budgetnet train` and `budgetnet evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from budgetnet.cli._app import app
from budgetnet.cli._budget_options import (
    Int8BytesOption,
    LatencyBatchOption,
    MaxBytesOption,
    MaxFlopsOption,
    MaxLatencyOption,
    limit_overrides,
)
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
    data_overrides,
)
from budgetnet.cli._eval_options import BatchSizeOpt, DeviceOpt, JsonOpt, SplitOpt, TtaOpt, check_split
from budgetnet.cli._model_options import (
    ActivationOption,
    BlockKernelsOption,
    BlockOption,
    BlocksOption,
    ChannelsOption,
    ClassesOption,
    DropoutOption,
    HeadScaleOption,
    InputSizeOption,
    PoolOption,
    PresetOption,
    SkipKernelOption,
    StageKindsOption,
    StemKernelOption,
    StemWidthOption,
    StridesOption,
    model_overrides,
)
from budgetnet.errors import BudgetnetError

if TYPE_CHECKING:
    from budgetnet.config import RunConfig


def _set(tree: dict[str, Any], section: str, key: str, value: Any) -> None:
    if value is not None:
        tree.setdefault(section, {})[key] = value


@app.command()
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="Run config YAML (see configs/).")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="A shipped recipe: flagship (default), long, cpu300.")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this directory.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory [default: runs/<name>-<time>].")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Run name, used in the directory name.")] = None,
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
    blocks: BlocksOption = None,
    channels: ChannelsOption = None,
    strides: StridesOption = None,
    stage_kinds: StageKindsOption = None,
    block_kernels: BlockKernelsOption = None,
    skip_kernel: SkipKernelOption = None,
    stem_width: StemWidthOption = None,
    stem_kernel: StemKernelOption = None,
    pool: PoolOption = None,
    block: BlockOption = None,
    activation: ActivationOption = None,
    classes: ClassesOption = None,
    dropout: DropoutOption = None,
    input_size: InputSizeOption = None,
    head_scale: HeadScaleOption = None,
    budget: Annotated[str | None, typer.Option("--budget", help="Parameter budget, e.g. 5M.")] = None,
    max_flops: MaxFlopsOption = None,
    max_bytes: MaxBytesOption = None,
    int8_bytes: Int8BytesOption = False,
    max_latency_ms: MaxLatencyOption = None,
    latency_batch: LatencyBatchOption = None,
    allow_over_budget: Annotated[bool, typer.Option("--allow-over-budget", help="Train even if over budget.")] = False,
    epochs: Annotated[int | None, typer.Option("--epochs")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="sgd, adam, adamw, adamax, adagrad, rmsprop, adadelta, asgd, muon (Muon on conv filters, Nesterov SGD on the rest)")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay")] = None,
    schedule: Annotated[str | None, typer.Option("--schedule", help="constant, step, cosine, cosine_restarts, plateau, cyclic, onecycle, linear")] = None,
    label_smoothing: Annotated[float | None, typer.Option("--label-smoothing")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="auto, fp32, bf16, fp16")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, mps")] = None,
    compile_model: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads [default: all].")] = None,
    patience: Annotated[int | None, typer.Option("--patience", help="Early stopping on val accuracy.")] = None,
    on_nan: Annotated[str | None, typer.Option("--on-nan", help="stop (default) or skip the batch")] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", help="Also checkpoint every N steps.")] = None,
    max_train_seconds: Annotated[float | None, typer.Option("--max-train-seconds", help="Stop after this much training time.")] = None,
    time_budget: Annotated[str | None, typer.Option("--time-budget", help="Seconds of training to plan the run for (epochs and schedule are compressed to fit); none lifts a recipe's budget.")] = None,
    pflop: Annotated[float | None, typer.Option("--pflop", help="Training compute to plan the run for, in PFLOP (3 x forward FLOPs x images); with --time-budget the tighter wins.")] = None,
    set_values: Annotated[list[str] | None, typer.Option("--set", help="Any config field, e.g. --set optim.muon_lr=0.3 --set train.tta=final (YAML value); repeatable, applied last.")] = None,
    log: Annotated[list[str] | None, typer.Option("--log", help="Experiment tracker fed every epoch: tensorboard (needs budgetnet[tracking]); repeatable.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="One plain line per epoch.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print summary.json at the end.")] = False,
) -> None:
    """Train a budgeted ResNet: the flagship recipe unless a config, recipe or model is named."""
    from budgetnet.config import build_config, read_yaml_mapping
    from budgetnet.train.engine import TrainingInterrupted
    from budgetnet.train.engine import train as run_training

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
    try:
        result = run_training(cfg, out, resume=resume is not None, quiet=quiet)
    except TrainingInterrupted as exc:
        typer.echo(f"budgetnet: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
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


def config_overrides(p: dict[str, Any]) -> dict[str, Any]:
    """The run-config overrides that the train command's options `p` (by parameter name, as
    in its context) set; options not given are left out."""
    overrides: dict[str, Any] = {}
    data_over = data_overrides(p["data"], p["download"], p["resize"], p["input_size"], p["val_size"], p["split_seed"],
                               p["subset"], p["no_cache"], p["labels"], p["download_cifar100"])
    if data_over:
        overrides["data"] = data_over
    model_over = model_overrides(**{k: p[k] for k in (
        "blocks", "channels", "strides", "stage_kinds", "block_kernels", "skip_kernel", "stem_width", "stem_kernel",
        "pool", "block", "activation", "classes", "dropout", "input_size", "head_scale")})
    if p["preset"] is not None:
        model_over = {"preset": p["preset"], **model_over}
    elif {"blocks", "channels"} <= model_over.keys():
        model_over = {"preset": None, **model_over}  # a fresh spec, not an edit of the recipe's model
    if model_over:
        overrides["model"] = model_over
    if p["name"] is not None:
        overrides["name"] = p["name"]
    overrides.update(limit_overrides(p["budget"], p["max_flops"], p["max_bytes"], p["int8_bytes"], p["max_latency_ms"],
                                     p["latency_batch"]))
    if p["allow_over_budget"]:
        overrides["allow_over_budget"] = True
    for key, option in (("epochs", "epochs"), ("batch_size", "batch_size"), ("seed", "seed"),
                        ("label_smoothing", "label_smoothing"), ("precision", "precision"), ("device", "device"),
                        ("compile", "compile_model"), ("threads", "threads"), ("on_nan", "on_nan"),
                        ("checkpoint_every_steps", "checkpoint_every"), ("max_train_seconds", "max_train_seconds"),
                        ("time_budget_s", "time_budget"), ("pflop_budget", "pflop")):
        _set(overrides, "train", key, p[option])
    _set(overrides, "train", "log", list(p["log"]) if p["log"] else None)  # not given: an empty tuple or None
    if p["patience"] is not None:
        _set(overrides, "train", "early_stopping", {"monitor": "val_acc", "patience": p["patience"]})
    for key, option in (("name", "optimizer"), ("lr", "lr"), ("weight_decay", "weight_decay")):
        _set(overrides, "optim", key, p[option])
    _set(overrides, "schedule", "name", p["schedule"])
    return _with_set_values(overrides, p.get("set_values") or [])


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
