"""`budgetnet export`: ONNX export that matches PyTorch, its metadata, int8 quantization
(deterministic, close to fp32), evaluation of an exported file, and the one-line errors
(a missing extra, a model that disagrees, bad input) that leave nothing written."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import CLASSES, make_synthetic, rewrite_checkpoint, train_tiny, write_npz

from budgetnet import deploy
from budgetnet.cli import main
from budgetnet.deploy import OnnxModel, export_model, load_model, quantize_int8
from budgetnet.models import count_params
from budgetnet.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small run on an easy set (20 validation images per class) and its data; tests copy it
    before writing. 32 channels: enough weights (20k) for int8 to show its size."""
    root = tmp_path_factory.mktemp("deploy")
    data = write_npz(root / "easy.npz", make_synthetic({"train": 60, "test": 10}, seed=4))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUDGETNET_CACHE", str(root / "cache"))
        train_tiny(data, root / "run", "--val-size", "60", "--channels", "32")
    return root / "run", data


@pytest.fixture(scope="module")
def exported(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The run exported with --int8 (seed 0) by the library: its folder and report."""
    out = tmp_path_factory.mktemp("exported")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BUDGETNET_CACHE", str(out / "cache"))
        report = export_model(trained[0], out / "export", int8=True, seed=0)
    return out / "export", report


@pytest.fixture
def run(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    return copy


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("budgetnet: error: ") and "Traceback" not in err, err
    return err


def val_pixels(trained: tuple[Path, Path]) -> torch.Tensor:
    x = np.load(trained[1])["x"][:7]
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255


def test_round_trip_matches_pytorch(exported: tuple[Path, dict], trained: tuple[Path, Path]) -> None:
    """Raw pixels / 255 in, the same logits out as the checkpoint's network after its own
    normalization, at any batch size (the batch dimension is dynamic)."""
    folder, report = exported
    state = load_checkpoint(trained[0] / "best.pt")
    torch_model = load_model(trained[0])
    onnx_model = OnnxModel(folder / "model.onnx")
    pixels = val_pixels(trained)
    mean, std = torch.tensor(state.mean).view(1, 3, 1, 1), torch.tensor(state.std).view(1, 3, 1, 1)
    with torch.no_grad():
        reference = torch_model.module.net((pixels - mean) / std)
        for batch in (1, 7):
            got = onnx_model(pixels[:batch])
            assert got.shape == (batch, 3)
            torch.testing.assert_close(got, reference[:batch], atol=1e-4, rtol=1e-4)
    check = report["verification"]
    assert check["images"] == 60 and check["top1_agreement"] == 1.0
    assert check["max_abs_logit_diff"] <= check["tolerance"] < 0.1
    assert report["split"] == "val" and report["opset"] >= 18


def test_metadata_in_the_model_and_beside_it(exported: tuple[Path, dict], trained: tuple[Path, Path]) -> None:
    folder, report = exported
    state = load_checkpoint(trained[0] / "best.pt")
    proto = onnx.load(folder / "model.onnx")
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props if p.key in deploy._META_KEYS}
    assert meta["classes"] == CLASSES and meta["input_size"] == 32 and meta["precision"] == "fp32"
    assert meta["mean"] == pytest.approx(state.mean) and meta["std"] == pytest.approx(state.std)
    assert meta["params"] == count_params(load_model(trained[0]).config.model)
    assert meta["budgetnet_version"] and meta["source_run"] == str(trained[0].resolve())
    assert meta["checkpoint"].endswith("best.pt") and meta["config"]["data"]["val_size"] == 60
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic
    on_disk = json.loads((folder / "model.json").read_text())
    assert on_disk["classes"] == CLASSES and "[0, 1]" in on_disk["input"]
    for name in ("model.onnx", "model-int8.onnx"):
        blob = (folder / name).read_bytes()
        assert on_disk["files"][name]["bytes"] == len(blob)
        assert on_disk["files"][name]["sha256"] == hashlib.sha256(blob).hexdigest()
    int8_meta = {p.key: json.loads(p.value) for p in onnx.load(folder / "model-int8.onnx").metadata_props
                 if p.key in ("classes", "precision")}
    assert int8_meta == {"classes": CLASSES, "precision": "int8"}


def test_int8_close_to_fp32_and_smaller(exported: tuple[Path, dict]) -> None:
    folder, report = exported
    q = report["int8"]
    assert q["fp32"]["accuracy"] >= 0.9  # the easy set is learned
    assert abs(q["accuracy_drop_points"]) <= 100 / 60 + 1e-9  # at most one of the 60 images
    assert q["fp32"]["bytes"] == (folder / "model.onnx").stat().st_size
    assert q["size_ratio"] == q["fp32"]["bytes"] / q["int8"]["bytes"] > 2.5
    assert q["calibration"] == {"images": 120, "split": "train", "seed": 0, "stratified": True}
    assert q["weights"] == "int8 per-channel" and q["weight_range"] == [-64, 64] and q["format"] == "QDQ"
    assert not {"Conv", "Gemm"} & set(q["float_ops"])
    for row in (q["fp32"], q["int8"]):
        assert row["latency_ms_batch1"] > 0 and row["latency_ms_batch64"] > 0
    graph = onnx.load(folder / "model-int8.onnx").graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4 for t in graph.initializer)  # conv weights


def test_int8_keeps_a_whitening_stem(tmp_path: Path, capsys) -> None:
    """The speed-run stem convolves normalized pixels (uint8 zero point near 128) with filters
    that each fill the int8 range; full-range int8 weights saturated the int16 pair sums of x86
    CPUs without VNNI and cost this model a third of its top-1 there. 7-bit weights cannot
    saturate on any CPU. Its global max pool also needs pre-processing that follows ReduceMax."""
    data = write_npz(tmp_path / "easy.npz", make_synthetic({"train": 60, "test": 10}, seed=4))
    run = train_tiny(data, tmp_path / "run", "--val-size", "60", "--preset", "speedrun_2m", "--blocks", "1,1,1",
                     "--channels", "8,16,16", epochs=4)
    capsys.readouterr()
    q = export_model(run, tmp_path / "export", int8=True)["int8"]
    assert capsys.readouterr().err == ""  # neither a pre-processing fallback nor an accuracy warning
    assert q["fp32"]["accuracy"] >= 0.9 and abs(q["accuracy_drop_points"]) <= 100 / 60 + 1e-9
    graph = onnx.load(tmp_path / "export" / "model-int8.onnx").graph
    weights = [onnx.numpy_helper.to_array(t) for t in graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(weights) == 7 and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64


def test_squeeze_excite_gates_export_and_quantize(tmp_path: Path, capsys) -> None:
    """The gates (mean pool, two 1x1 convs, sigmoid, a per-channel product) export, match
    PyTorch, and keep their accuracy in int8 with no fallback."""
    data = write_npz(tmp_path / "easy.npz", make_synthetic({"train": 60, "test": 10}, seed=4))
    run = train_tiny(data, tmp_path / "run", "--val-size", "60", "--preset", "speedrun_2m", "--blocks", "1,1,1",
                     "--channels", "8,16,16", "--set", "model.se_ratio=0.5", epochs=4)
    capsys.readouterr()
    q = export_model(run, tmp_path / "export", int8=True)["int8"]
    assert capsys.readouterr().err == ""
    assert q["fp32"]["accuracy"] >= 0.9 and abs(q["accuracy_drop_points"]) <= 100 / 60 + 1e-9
    ops = {node.op_type for node in onnx.load(tmp_path / "export" / "model.onnx").graph.node}
    assert {"Sigmoid", "Mul"} <= ops


def test_int8_is_deterministic(exported: tuple[Path, dict], trained: tuple[Path, Path], tmp_path: Path,
                               capsys) -> None:
    """Same seed: the same calibration images and the same int8 file, byte for byte; another
    seed calibrates on other images."""
    folder, report = exported
    code, out, err = cli(capsys, "export", trained[0], "--int8", "--seed", "0", "--out", tmp_path / "again")
    assert code == 0, err
    assert (tmp_path / "again" / "model-int8.onnx").read_bytes() == (folder / "model-int8.onnx").read_bytes()
    assert "top-1 (val)" in out and "fp32" in out and "int8" in out and "model.json" in out
    fp32 = (folder / "model.onnx").read_bytes()
    x = torch.from_numpy(np.load(trained[1])["x"][:30]).permute(0, 3, 1, 2).float() / 255
    meta = {"precision": "int8"}
    first, _ = quantize_int8(fp32, x[:20], meta)
    assert quantize_int8(fp32, x[:20], meta)[0] == first
    assert quantize_int8(fp32, x[10:], meta)[0] != first


def test_export_cli_json_and_last_checkpoint_at_an_opset_it_cannot_write(run: Path, capsys) -> None:
    """last.pt exports like best.pt; one written before it recorded the classes and statistics
    takes them from summary.json or best.pt beside it. The exporter cannot convert this model
    below opset 18: a warning says so, never silence."""
    code, out, err = cli(capsys, "export", run, "--last", "--opset", "17", "--json", "--split", "test")
    assert code == 0, err
    report = json.loads(out)
    assert report["checkpoint"] == str((run / "last.pt").resolve()) and report["classes"] == CLASSES
    assert report["opset"] == 18 and "int8" not in report and report["split"] == "test"
    assert "warning: opset 17 could not be written" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in (run / "export").iterdir()) == ["model.json", "model.onnx"]
    rewrite_checkpoint(run / "last.pt", lambda payload: {k: v for k, v in payload.items()
                                                          if k not in ("classes", "mean", "std")})
    assert cli(capsys, "export", run, "--last", "--out", run / "older")[0] == 0  # from summary.json
    (run / "summary.json").unlink()
    (run / "best.pt").unlink()
    line = one_line_error(*cli(capsys, "export", run, "--last")[::2])
    assert "last.pt does not record the class names" in line


def test_a_model_that_disagrees_fails_and_writes_nothing(run: Path, monkeypatch, capsys) -> None:
    real = deploy.to_onnx

    def wrong_weights(module, input_size, opset=None):
        broken = load_model(run).module
        with torch.no_grad():
            broken.net.fc.bias[0] += 3.0
        return real(broken, input_size, opset)

    monkeypatch.setattr(deploy, "to_onnx", wrong_weights)
    line = one_line_error(*cli(capsys, "export", run, "--int8")[::2])
    assert "disagrees with PyTorch" in line and "nothing was written" in line
    assert not (run / "export").exists()


def test_evaluate_an_exported_model(exported: tuple[Path, dict], trained: tuple[Path, Path], capsys) -> None:
    """The same report as for the checkpoint, on the user's own test split."""
    folder, _ = exported
    data = trained[1]
    code, out, err = cli(capsys, "evaluate", folder / "model.onnx", "--data", data, "--split", "test", "--json")
    assert code == 0, err
    shipped = json.loads(out)
    code, out, err = cli(capsys, "evaluate", trained[0], "--data", data, "--split", "test", "--json", "--device", "cpu")
    assert code == 0, err
    original = json.loads(out)
    assert shipped["images"] == original["images"] == 30 and shipped["classes"] == CLASSES
    assert shipped["confusion_matrix"] == original["confusion_matrix"]
    assert shipped["loss"] == pytest.approx(original["loss"], rel=1e-4)
    assert shipped["checkpoint"] == str(folder / "model.onnx") and Path(shipped["confusion_png"]).parent == folder
    code, out, err = cli(capsys, "evaluate", folder / "model-int8.onnx", "--tta", "--json")  # val, from metadata
    assert code == 0, err
    assert json.loads(out)["images"] == 60 and json.loads(out)["tta"] is True


def test_missing_extra_is_one_line(run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    for argv in (["export", run], ["predict", tmp_path / "model.onnx", tmp_path]):
        if argv[0] == "predict":
            (tmp_path / "model.onnx").write_bytes(b"")
        line = one_line_error(*cli(capsys, *argv)[::2])
        assert "pip install 'budgetnet[deploy]'" in line
    assert not (run / "export").exists()


def test_main_path_never_imports_the_extra() -> None:
    probe = ("import sys, budgetnet.cli, budgetnet.deploy, budgetnet.predict; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'onnxscript')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bad_input(run: Path, tmp_path: Path, exported: tuple[Path, dict], capsys) -> None:
    assert "no checkpoint" in one_line_error(*cli(capsys, "export", tmp_path / "nothing")[::2])
    assert "already an ONNX model" in one_line_error(*cli(capsys, "export", exported[0] / "model.onnx")[::2])
    assert "does not exist" in one_line_error(*cli(capsys, "export", run, "--data", tmp_path / "none.npz")[::2])
    assert "--split" in one_line_error(*cli(capsys, "export", run, "--split", "nope")[::2])
    assert "--format" in one_line_error(*cli(capsys, "export", run, "--format", "tflite")[::2])
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert "cannot load" in one_line_error(*cli(capsys, "evaluate", tmp_path / "junk.onnx")[::2])
    assert not (run / "export").exists()
