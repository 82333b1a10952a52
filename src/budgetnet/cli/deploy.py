"""`budgetnet export` and `budgetnet predict`."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from budgetnet.cli._app import app
from budgetnet.cli._data_options import DataPathOpt, ResizeOpt
from budgetnet.errors import BudgetnetError, warn

if TYPE_CHECKING:
    from budgetnet.predict import Prediction


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A run directory (its best.pt) or a checkpoint file.")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder [default: export/ beside the checkpoint].")] = None,
    fmt: Annotated[Literal["onnx"], typer.Option("--format", help="Export format.")] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="Also write model-int8.onnx (static int8 quantization) and compare it with fp32.")] = False,
    opset: Annotated[int | None, typer.Option("--opset", min=1, help="ONNX opset [default: the exporter's].")] = None,
    last: Annotated[bool, typer.Option("--last", help="Export the run's last.pt instead of its best.pt.")] = False,
    data: DataPathOpt = None,
    split: Annotated[str | None, typer.Option("--split", help="Images to verify and evaluate on: val, test or train [default: val, or train when the run has no validation split].")] = None,
    calibration_images: Annotated[int, typer.Option("--calibration-images", min=1, help="Training images (stratified) that calibrate int8.")] = 300,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the calibration and verification samples.")] = 0,
    verify_images: Annotated[int, typer.Option("--verify-images", min=1, help="Images on which ONNX Runtime must match PyTorch.")] = 512,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report (model.json) as one JSON object.")] = False,
) -> None:
    """The model of a run as ONNX (normalization inside; input: RGB pixels / 255), checked
    against PyTorch; with --int8, quantized and measured too."""
    from budgetnet.deploy import export_model

    if split not in (None, "val", "test", "train"):
        raise BudgetnetError(f"--split must be val, test or train, not {split!r}")
    report = export_model(run, out, last=last, int8=int8, opset=opset, data_path=data, split=split,
                          calibration_images=calibration_images, seed=seed, verify_images=verify_images)
    if json_out:
        typer.echo(json.dumps(report))
        return
    files, check = report["files"], report["verification"]
    typer.echo(f"wrote {files['model.onnx']['path']} (opset {report['opset']}, {files['model.onnx']['bytes']:,} bytes)")
    typer.echo(f"verified against PyTorch on {check['images']} {report['split']} images: max |logit difference| "
               f"{check['max_abs_logit_diff']:.2g} (tolerance {check['tolerance']:.2g}), top-1 agreement "
               f"{100 * check['top1_agreement']:.2f}%")
    if "int8" in report:
        q = report["int8"]
        typer.echo(f"wrote {files['model-int8.onnx']['path']} ({q['format']}, {q['weights']} weights, calibrated on "
                   f"{q['calibration']['images']} training images, seed {q['calibration']['seed']})")
        typer.echo(f"{'':6}{'top-1 (' + q['evaluated_on']['split'] + ')':>14}{'bytes':>14}{'batch 1':>12}{'batch 64':>12}")
        for name in ("fp32", "int8"):
            r = q[name]
            typer.echo(f"{name:6}{100 * r['accuracy']:>13.2f}%{r['bytes']:>14,}{r['latency_ms_batch1']:>10.2f}ms"
                       f"{r['latency_ms_batch64']:>10.1f}ms")
        typer.echo(f"int8 top-1 {q['accuracy_drop_points']:.2f} points below fp32, file {q['size_ratio']:.2f}x smaller "
                   f"({q['evaluated_on']['images']} images; latency with {q['threads']} thread(s))")
    typer.echo(f"report: {Path(files['model.onnx']['path']).with_name('model.json')}")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="A run directory, a checkpoint (.pt) or an exported .onnx.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, folders of images, or .zip files of them.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes shown per image.")] = 3,
    tta: Annotated[bool, typer.Option("--tta", help="Flip + translate test-time augmentation.")] = False,
    resize: ResizeOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list, one object per image.")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV: file, then label and probability per rank.")] = False,
) -> None:
    """Top classes of each image, resized as the model was trained. Files that cannot be read
    are reported on stderr, one line each, and make the exit code 1."""
    from budgetnet.deploy import load_model
    from budgetnet.predict import predict_images

    if json_out and csv_out:
        raise BudgetnetError("--json and --csv exclude each other; pick one")
    deployed = load_model(model)
    rows: list[Prediction] = []
    predicted = failed = 0
    writer = csv.writer(sys.stdout, lineterminator="\n") if csv_out else None
    if writer is not None:
        k = min(top_k, len(deployed.classes))
        writer.writerow(["file", *[f"{what}_{r}" for r in range(1, k + 1) for what in ("label", "probability")]])
    for p in predict_images(deployed, images, top_k=top_k, tta=tta, resize=resize, batch_size=batch_size):
        if p.error is not None:
            failed += 1
            warn(p.error)
            continue
        predicted += 1
        if writer is not None:  # streamed: a zip of any size never waits on the whole table
            writer.writerow([p.file, *(v for label, prob in zip(p.labels, p.probabilities) for v in (label, f"{prob:.6f}"))])
        else:
            rows.append(p)
    if predicted + failed == 0:
        raise BudgetnetError(f"no files found in {', '.join(map(str, images))}; pass image files, folders or .zip files")
    if json_out:
        typer.echo(json.dumps([p.to_dict() for p in rows]))
    elif writer is None:
        _print_table(rows)
    if failed:
        typer.echo(f"budgetnet: {failed} of {failed + predicted} files could not be predicted", err=True)
        raise typer.Exit(1)


def _print_table(rows: list[Prediction]) -> None:
    from rich.console import Console
    from rich.table import Table

    k = max((len(p.labels) for p in rows), default=0)
    table = Table("file", *[f"top {r}" for r in range(1, k + 1)], box=None)
    for p in rows:
        table.add_row(p.file, *[f"{label} {100 * prob:.1f}%" for label, prob in zip(p.labels, p.probabilities)])
    Console(width=max(Console().width, 120)).print(table)
