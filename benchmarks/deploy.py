"""What shipping a run costs and gains: top-1, file bytes and latency of its model as fp32
PyTorch, fp32 ONNX and int8 ONNX (onnxruntime, CPU), on one machine in one run.

All three see the same images (the run's validation split unless --split names another),
with the same thread count; latency is the median of repeated forward passes at batch 1 and
batch 64. PyTorch's bytes are its state_dict as torch.save writes it (batch norm unfolded).
Not a test; run:

    .venv/bin/python benchmarks/deploy.py --run RUN --data PATH [--split val|test|train]
        [--calibration-images 300] [--seed 0] [--threads N] [--out DIR]

Prints a Markdown table, then the machine it ran on.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import torch

from budgetnet.deploy import export_model, load_model, measure, require
from budgetnet.evaluate import load_split
from budgetnet.machine import describe_machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="run directory (its best.pt) or checkpoint")
    parser.add_argument("--data", help="dataset path [default: the run's own]")
    parser.add_argument("--split", help="val, test or train [default: val, train without a validation split]")
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="threads of torch and onnxruntime [default: torch's]")
    parser.add_argument("--out", type=Path, help="keep the exported models here [default: a temporary folder]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="budgetnet-deploy-") as tmp:
        report = export_model(args.run, args.out or Path(tmp), int8=True, data_path=args.data, split=args.split,
                              calibration_images=args.calibration_images, seed=args.seed)
    model = load_model(args.run)
    data_cfg = model.config.data.model_copy(update={"path": args.data} if args.data else {})
    x, y = load_split(data_cfg, report["split"], model.classes, torch.device("cpu"))
    weights = io.BytesIO()
    torch.save(model.module.net.state_dict(), weights)
    q = report["int8"]
    rows = {
        "fp32 PyTorch": {**measure(model.module, x, y, model.classes), "bytes": len(weights.getvalue())},
        "fp32 ONNX": q["fp32"],
        "int8 ONNX": q["int8"],
    }
    print(f"| model | top-1 ({report['split']}, {len(y):,} images) | bytes | batch 1 ms | batch 64 ms | img/s at 64 |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {100 * r['accuracy']:.2f}% | {r['bytes']:,} | {r['latency_ms_batch1']:.2f} | "
              f"{r['latency_ms_batch64']:.1f} | {64_000 / r['latency_ms_batch64']:,.0f} |")
    ort = require("onnxruntime")
    print(f"\n{args.run}: {report['params']:,} params, opset {report['opset']}, weights {q['weights']} "
          f"({q['calibration']['images']} calibration images, seed {q['calibration']['seed']}); "
          f"{describe_machine()}, onnxruntime {ort.__version__}")


if __name__ == "__main__":
    main()
