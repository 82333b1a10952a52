"""Shipping a trained model: ONNX export with its metadata, int8 quantization, and running
saved or exported models for prediction and evaluation.

An exported model takes float32 RGB images, N x 3 x H x W, with values in [0, 1] (pixel / 255),
and returns logits; the training split's mean/std normalization is part of the graph, so
users feed plain pixels and never need the statistics. The batch dimension is dynamic.

onnx, onnxscript and onnxruntime are the optional extra `budgetnet[deploy]`: they are imported
here only, and only when a function needs them (`require`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from pydantic import ValidationError
from torch import nn

import budgetnet
from budgetnet.config import RunConfig
from budgetnet.data import DeviceLoader
from budgetnet.data.sources import Resize
from budgetnet.data.splits import stratified_subset
from budgetnet.errors import BudgetnetError, one_line, warn
from budgetnet.evaluate import EvalResult, eval_data_config, evaluate_loader, load_split, load_trained
from budgetnet.files import atomic_write_bytes, write_json
from budgetnet.models import count_params

FP32_FILE, INT8_FILE, REPORT_FILE = "model.onnx", "model-int8.onnx", "model.json"
INPUT_FORMAT = "float32 RGB, N x 3 x H x W, values in [0, 1] (pixel / 255); normalization is in the graph"
# ONNX Runtime fuses and reorders float ops, so logits differ from PyTorch's by rounding only:
# ~1e-6 of their scale measured; a real export bug (wrong weights, layout, normalization)
# shows up as differences of the order of the logits themselves.
RELATIVE_TOLERANCE = 1e-3
INT8_TARGET_POINTS = 0.5  # int8 top-1 may trail fp32 by this much before export warns
LATENCY_BATCHES = (1, 64)
_META_KEYS = ("classes", "input_size", "resize", "mean", "std", "params", "budgetnet_version",
              "source_run", "checkpoint", "epoch", "precision", "config")
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir", "onnxruntime", "")


def require(module: str) -> ModuleType:
    """Import a module of the deploy extra, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BudgetnetError(f"ONNX export and inference need onnx, onnxscript and onnxruntime ({exc}); "
                             "install them with: pip install 'budgetnet[deploy]'") from None


class Normalized(nn.Module):
    """A trained network behind its input normalization: takes pixel / 255, like the export."""

    def __init__(self, net: nn.Module, mean: Iterable[float], std: Iterable[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class OnnxModel(nn.Module):
    """An ONNX model in onnxruntime (CPU) as a module, pixel / 255 in and logits out, so that
    `predict_logits` (TTA included) and `evaluate_loader` run it like the PyTorch model."""

    def __init__(self, model: bytes | Path) -> None:
        super().__init__()
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        # As many threads as torch uses (OMP_NUM_THREADS, --threads): latencies then compare.
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        name = "the exported model" if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime has its own exception types for a bad model
            raise BudgetnetError(f"onnxruntime {ort.__version__} cannot load {name}: "
                                 f"{one_line(exc)[:300]}; write it again with budgetnet export (at another --opset if the "
                                 "opset is what it names)") from None
        self.input_name = self.session.get_inputs()[0].name
        raw = self.session.get_modelmeta().custom_metadata_map
        try:
            self.metadata = {key: json.loads(raw[key]) for key in _META_KEYS if key in raw}
        except ValueError:
            self.metadata = {}
        if "classes" not in self.metadata or "config" not in self.metadata:
            raise BudgetnetError(f"{name} has no budgetnet metadata (classes, input size, data settings); "
                                 "use a model written by budgetnet export")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: pixels})[0])


@dataclass
class Deployed:
    """A model ready to run on pixel / 255 (`module`), with what feeding it needs."""

    module: nn.Module
    classes: list[str]
    config: RunConfig
    mean: list[float]
    std: list[float]
    source: Path  # the checkpoint or the .onnx file
    epoch: int | None

    @property
    def input_size(self) -> int:
        return self.config.data.input_size

    @property
    def resize(self) -> Resize | None:
        return self.config.data.resize


def load_model(path: Path, *, last: bool = False) -> Deployed:
    """A run directory (its best.pt, or last.pt with `last`), a checkpoint, or an exported .onnx."""
    path = Path(path)
    if path.suffix.lower() == ".onnx" and path.is_file():
        onnx_model = OnnxModel(path)
        meta = onnx_model.metadata
        try:
            cfg = RunConfig.model_validate(meta["config"])
        except ValidationError as exc:
            raise BudgetnetError(f"{path} has a run config budgetnet {budgetnet.__version__} cannot read "
                                 f"({exc.error_count()} problems); export it again with this version") from None
        return Deployed(onnx_model.eval(), list(meta["classes"]), cfg, meta["mean"], meta["std"], path,
                        meta.get("epoch"))
    trained = load_trained(path / "last.pt" if last and path.is_dir() else path)
    mean, std = list(trained.mean), list(trained.std)
    return Deployed(Normalized(trained.model, mean, std).eval(), trained.classes, trained.config, mean, std,
                    trained.checkpoint, trained.epoch)


# ------------------------------------------------------------------------------------ export

@contextlib.contextmanager
def _captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Hold back the exporter's and quantizer's chatter (their progress lines, and tracebacks
    of conversions they recover from) and hand the records to the caller, who decides what
    the user needs to hear."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    saved = []
    handler = Collect(logging.WARNING)
    for name in _QUIET_LOGGERS:
        log = logging.getLogger(name)
        saved.append((log, log.handlers[:], log.propagate))
        log.handlers, log.propagate = [handler], False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notices of torch internals
            yield records
    finally:
        for log, handlers, propagate in saved:
            log.handlers, log.propagate = handlers, propagate


def _reason(records: list[logging.LogRecord]) -> str:
    """The last error the exporter logged and recovered from, in one short line."""
    for record in reversed(records):
        if record.exc_info and record.exc_info[1] is not None:
            return one_line(record.exc_info[1])[:200]
    return one_line(records[-1].getMessage())[:200] if records else "no reason given"


def _opset(model_bytes: bytes) -> int:
    onnx = require("onnx")
    proto = onnx.load_from_string(model_bytes)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def to_onnx(module: nn.Module, input_size: int, opset: int | None = None) -> tuple[bytes, int]:
    """`module` (pixel / 255 in) as ONNX bytes with a dynamic batch dimension, by the dynamo
    exporter; and the opset it got. An opset the exporter cannot write falls back to what it
    can, with a warning."""
    for name in ("onnx", "onnxscript"):
        require(name)
    example = torch.rand(2, 3, input_size, input_size)  # batch 2: a batch of 1 would be specialized
    options = {} if opset is None else {"opset_version": opset}
    with _captured_logs() as records:
        try:
            program = torch.onnx.export(
                module.eval(), (example,), dynamo=True, verbose=False, input_names=["images"],
                output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},), **options,
            )
            model_bytes = program.model_proto.SerializeToString()
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types for one meaning
            if opset is None:
                raise BudgetnetError(f"the ONNX exporter failed: {one_line(exc)[:300]}") from None
            warn(f"exporting at opset {opset} failed ({one_line(exc)[:200]}); exporting at the exporter's default opset")
            return to_onnx(module, input_size)
    got = _opset(model_bytes)
    if opset is not None and got != opset:
        warn(f"opset {opset} could not be written (the exporter's conversion failed: {_reason(records)}); "
             f"the model uses opset {got}")
    return model_bytes, got


def with_metadata(model_bytes: bytes, metadata: dict[str, Any]) -> bytes:
    """`model_bytes` with `metadata` (JSON-encoded values) in the model's metadata props, and
    without the exporter's annotations of single nodes and values: Python stack traces with
    this machine's paths, a tenth of a small model's file."""
    onnx = require("onnx")
    proto = onnx.load_from_string(model_bytes)
    for item in (*proto.graph.node, *proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        del item.metadata_props[:]
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    return proto.SerializeToString()


def _metadata(model: Deployed, precision: Literal["fp32", "int8"]) -> dict[str, Any]:
    return {
        "classes": model.classes,
        "input_size": model.input_size,
        "resize": model.resize,
        "mean": model.mean,
        "std": model.std,
        "params": count_params(model.config.model),
        "budgetnet_version": budgetnet.__version__,
        "source_run": str(model.source.parent.resolve()),
        "checkpoint": str(model.source.resolve()),
        "epoch": model.epoch,
        "precision": precision,
        "config": model.config.model_dump(mode="json"),
    }


@torch.no_grad()
def compare_logits(reference: nn.Module, other: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]
                   ) -> dict[str, Any]:
    """Largest |logit difference| and top-1 agreement of `other` against `reference`."""
    worst, scale, agree, n = 0.0, 1.0, 0, 0
    for x, _ in batches:
        a, b = reference(x).float(), other(x).float()
        worst = max(worst, float((a - b).abs().max()))
        scale = max(scale, float(a.abs().max()))
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        n += len(x)
    return {"images": n, "max_abs_logit_diff": worst, "top1_agreement": agree / max(n, 1),
            "tolerance": RELATIVE_TOLERANCE * scale}


@torch.no_grad()
def latency_ms(module: nn.Module, x: torch.Tensor, *, min_runs: int = 5, max_runs: int = 50,
               max_seconds: float = 2.0) -> float:
    """Median milliseconds of one forward pass on `x`, after a warm-up pass."""
    module(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        module(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(module: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: list[str], *,
            batch_size: int = 256) -> dict[str, Any]:
    """Top-1 accuracy of a pixel / 255 module on uint8 images `x` (labels `y`), and its
    latency at batch 1 and 64 (real images from `x`)."""
    loader = DeviceLoader(x, y, batch_size, shuffle=False, drop_last=False, seed=0)
    result = evaluate_loader(module, loader, classes=classes)
    pixels = x[torch.arange(max(LATENCY_BATCHES)) % len(x)].float() / 255
    return {"accuracy": result.accuracy,
            **{f"latency_ms_batch{b}": latency_ms(module, pixels[:b]) for b in LATENCY_BATCHES}}


def _float_ops(model_bytes: bytes) -> dict[str, int]:
    """Op types left in float in a QDQ model: nodes none of whose inputs is dequantized."""
    onnx = require("onnx")
    graph = onnx.load_from_string(model_bytes).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return dict(Counter(node.op_type for node in graph.node
                        if node.op_type not in ("QuantizeLinear", "DequantizeLinear")
                        and not dequantized.intersection(node.input)))


def quantize_int8(model_bytes: bytes, calibration: torch.Tensor, metadata: dict[str, Any], *,
                  batch_size: int = 64) -> tuple[bytes, dict[str, Any]]:
    """Static int8 quantization (QDQ; int8 weights per channel in a 7-bit range, uint8
    activations per tensor, min-max ranges) calibrated on `calibration` (pixel / 255), with
    `metadata` in the result. A step that fails falls back with a warning: no pre-processing,
    then per-tensor weights. The same input gives the same bytes."""
    quant = require("onnxruntime.quantization")
    onnx = require("onnx")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load_from_string(model_bytes).graph.input[0].name
    batches = [{input_name: calibration[i:i + batch_size].numpy()} for i in range(0, len(calibration), batch_size)]

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self._next = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._next, None)

    opset = _opset(model_bytes)
    with tempfile.TemporaryDirectory(prefix="budgetnet-int8-") as tmp, _captured_logs():
        source, prepared, target = Path(tmp, "fp32.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        source.write_bytes(model_bytes)
        try:  # shape inference and graph clean-up, which quantization works best after
            # onnxruntime's symbolic shape inference cannot follow ReduceMax/ReduceMean with axes
            # as an input (opset 18+, how global pooling exports) and fails on such models; the
            # ONNX shape inference that quant_pre_process runs after it handles them.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # noqa: BLE001 - any failure here only loses an optimization
            warn(f"pre-processing for quantization failed at opset {opset} ({one_line(exc)[:200]}); "
                 "quantizing the graph as exported")
            prepared = source
        errors = []
        for weights, per_channel in (("per-channel", True), ("per-tensor", False)):
            try:
                # Weights in [-64, 64] (reduce_range): x86 CPUs without VNNI multiply uint8 by int8
                # in pairs summed into int16 (vpmaddubsw), which saturates once 2 x 255 x |w|
                # passes 32767; 7-bit weights never do. It bites layers whose uint8 inputs sit high,
                # above all a first conv on normalized pixels (zero point near 128): speedrun_2m's
                # whitening stem, its filters each scaled to the full int8 range, fell from 88.9%
                # to 38.4% top-1 on an AVX2 CPU, while the same QDQ graph run in float and the
                # model with that one conv left in fp32 both kept 88.9%. Weights are set at export,
                # and the file must run on any CPU.
                quant.quantize_static(
                    str(prepared), str(target), Reader(), quant_format=quant.QuantFormat.QDQ,
                    per_channel=per_channel, reduce_range=True, activation_type=quant.QuantType.QUInt8,
                    weight_type=quant.QuantType.QInt8, calibrate_method=quant.CalibrationMethod.MinMax,
                )
                int8_bytes = with_metadata(target.read_bytes(), metadata)
                OnnxModel(int8_bytes)  # the runtime must accept what the quantizer wrote
            except Exception as exc:  # noqa: BLE001 - the quantizer and the runtime raise many types
                errors.append(f"{weights}: {one_line(exc)[:200]}")
                if per_channel:
                    warn(f"int8 quantization with per-channel weights failed at opset {opset} ({errors[-1]}); "
                         "falling back to per-tensor weights")
                continue
            float_ops = _float_ops(int8_bytes)
            if heavy := sorted(set(float_ops) & {"Conv", "ConvTranspose", "Gemm", "MatMul"}):
                warn(f"onnxruntime left {', '.join(heavy)} in float at opset {opset}; the int8 model is "
                     "larger and slower than it could be")
            return int8_bytes, {"format": "QDQ", "weights": f"int8 {weights}", "weight_range": [-64, 64],
                                "activations": "uint8 per-tensor",
                                "calibration_method": "minmax", "opset": opset, "float_ops": float_ops}
    raise BudgetnetError(f"int8 quantization failed at opset {opset} ({'; '.join(errors)}); "
                         "export without --int8, or with another --opset")


def export_model(
    run: Path,
    out: Path | None = None,
    *,
    last: bool = False,
    int8: bool = False,
    opset: int | None = None,
    data_path: str | None = None,
    split: str | None = None,
    calibration_images: int = 300,
    seed: int = 0,
    verify_images: int = 512,
) -> dict[str, Any]:
    """Export a run's model (best.pt, last.pt with `last`, or a given checkpoint) to
    `out`/model.onnx (default `out`: an `export` folder beside the checkpoint), verified against
    PyTorch on `verify_images` images of `split`; with `int8`, also model-int8.onnx,
    calibrated on `calibration_images` training images (stratified, `seed`) and measured
    against fp32 on the whole split. `split`: val by default, train when the run has no
    validation split. Returns the report, written as model.json; nothing is written unless
    every step succeeded."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        require(name)
    if Path(run).suffix.lower() == ".onnx":
        raise BudgetnetError(f"{run} is already an ONNX model; export a run directory or a .pt checkpoint")
    model = load_model(run, last=last)
    out = Path(out) if out is not None else model.source.parent / "export"
    split = split or ("val" if model.config.data.val_size else "train")
    data_cfg = eval_data_config(model.config, data_path, split)
    cpu = torch.device("cpu")
    x, y = load_split(data_cfg, split, model.classes, cpu)

    fp32_meta = _metadata(model, "fp32")
    fp32_bytes, opset_used = to_onnx(model.module, model.input_size, opset)
    fp32_bytes = with_metadata(fp32_bytes, fp32_meta)
    fp32 = OnnxModel(fp32_bytes)
    pick = torch.from_numpy(stratified_subset(y.numpy(), min(verify_images, len(y)), seed))
    checked = compare_logits(model.module, fp32, DeviceLoader(x[pick], y[pick], 256))
    if not checked["max_abs_logit_diff"] <= checked["tolerance"]:  # NaN fails too
        raise BudgetnetError(
            f"the ONNX model disagrees with PyTorch on {checked['images']} {split} images: max |logit difference| "
            f"{checked['max_abs_logit_diff']:.3g} > tolerance {checked['tolerance']:.3g} (top-1 agreement "
            f"{100 * checked['top1_agreement']:.2f}%); nothing was written; try another --opset")
    files = {FP32_FILE: fp32_bytes}
    report: dict[str, Any] = {
        **fp32_meta, "format": "onnx", "opset": opset_used, "input": INPUT_FORMAT, "output": "logits",
        "split": split, "data": data_cfg.path, "verification": checked,
    }
    if int8:
        x_train, y_train = load_split(data_cfg, "train", model.classes, cpu)
        chosen = torch.from_numpy(stratified_subset(y_train.numpy(), min(calibration_images, len(y_train)), seed))
        int8_bytes, how = quantize_int8(fp32_bytes, x_train[chosen].float() / 255, {**fp32_meta, "precision": "int8"})
        files[INT8_FILE] = int8_bytes
        rows = {name: {**measure(OnnxModel(blob), x, y, model.classes), "bytes": len(blob)}
                for name, blob in (("fp32", fp32_bytes), ("int8", int8_bytes))}
        drop = 100 * (rows["fp32"]["accuracy"] - rows["int8"]["accuracy"])
        report["int8"] = {
            **how, "calibration": {"images": len(chosen), "split": "train", "seed": seed, "stratified": True},
            "evaluated_on": {"split": split, "images": len(y)}, "fp32": rows["fp32"], "int8": rows["int8"],
            "accuracy_drop_points": drop, "size_ratio": rows["fp32"]["bytes"] / rows["int8"]["bytes"],
            "threads": torch.get_num_threads(),
        }
        if drop > INT8_TARGET_POINTS:
            warn(f"int8 top-1 is {drop:.2f} points below fp32 on {split} (target: within {INT8_TARGET_POINTS}); "
                 "ship model.onnx where accuracy matters more than size")
    report["files"] = {name: {"path": str(out / name), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
                       for name, blob in files.items()}
    _write(out, files, report)
    return report


def _write(out: Path, files: dict[str, bytes], report: dict[str, Any]) -> None:
    """The models, then model.json, each atomically: model.json always describes the models
    beside it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BudgetnetError(f"cannot create {out}: {exc.strerror or exc}; choose another --out") from None
    for name, blob in files.items():
        atomic_write_bytes(out / name, blob)
    if INT8_FILE not in files:  # an int8 model from an earlier export would not match this one
        (out / INT8_FILE).unlink(missing_ok=True)
    write_json(out / REPORT_FILE, report)


def evaluate_onnx(path: Path, *, data_path: str | None = None, split: str = "val", tta: bool = False,
                  batch_size: int = 1000) -> tuple[EvalResult, dict[str, Any]]:
    """`evaluate_checkpoint` for an exported model: the same splits, checks and report, run by
    onnxruntime on the CPU."""
    model = load_model(path)
    data_cfg = eval_data_config(model.config, data_path, split)
    x, y = load_split(data_cfg, split, model.classes, torch.device("cpu"))
    loader = DeviceLoader(x, y, batch_size, shuffle=False, drop_last=False, seed=0)  # pixel / 255
    result = evaluate_loader(model.module, loader, tta=tta, classes=model.classes)
    info = {"checkpoint": str(path), "split": split, "tta": tta, "data": data_cfg.path, "epoch": model.epoch,
            "runtime": "onnxruntime"}
    return result, info
