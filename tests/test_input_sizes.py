"""A dataset of another class count and image size, end to end: a folder of 64x64 images of 3
classes trains the default recipe's speed-run net (its first stage pools 4x at 64x64), and
the run evaluates and exports at that size, all without --input-size or --classes."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import yaml
from conftest import make_synthetic, write_image_folder

from budgetnet.cli import main
from budgetnet.config import build_config
from budgetnet.models import summarize


def test_a_64px_folder_of_3_classes_trains_evaluates_and_exports(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_image_folder(tmp_path / "images", make_synthetic({"train": 12, "test": 4}, size=64))
    run = tmp_path / "run"
    code = main(["train", "--data", str(folder), "--channels", "8,16,16", "--epochs", "1", "--batch-size", "12",
                 "--val-size", "9", "--optimizer", "sgd", "--lr", "0.05", "--precision", "fp32", "--threads", "1",
                 "--device", "cpu", "--quiet", "--out", str(run)])
    assert code == 0, capsys.readouterr().err
    saved = build_config(yaml.safe_load((run / "config.yaml").read_text()))
    assert (saved.model.classes, saved.model.input_size, saved.data.input_size) == (3, 64, 64)
    assert saved.model.layer_strides == [4, 2, 2] and saved.model.feature_sizes == [15, 7, 3]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["flops"] == summarize(saved.model).flops and summary["data"]["image_size"] == [64, 64]
    capsys.readouterr()

    for split, images in (("val", 9), ("test", 12)):
        assert main(["evaluate", str(run), "--split", split, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["images"] == images and report["classes"] == ["cat", "dog", "frog"]

    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0, capsys.readouterr().err
    proto = onnx.load(tmp_path / "export" / "model.onnx")
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props if p.key in ("input_size", "classes")}
    assert meta == {"input_size": 64, "classes": ["cat", "dog", "frog"]}
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 64, 64]
