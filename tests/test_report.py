"""`budgetnet report`: the sections of a one-run report checked against figures computed here
(accuracy, per-class accuracy, expected calibration error, the most confidently wrong images),
the comparison of two runs, the PFLOP axis, the notes and errors without data, and the page
rendered by headless Chromium without console errors or broken images.

Two tiny runs (1,443 parameters, 3 epochs on 240 noisy 16x16 images, about 88% validation
accuracy, so some images are wrong) are trained once for the module.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_run_config, write_noisy_npz
from PIL import Image

from budgetnet.cli import main
from budgetnet.evaluate import predict_checkpoint
from budgetnet.models import count_params
from budgetnet.report import load_run, write_report
from budgetnet.train.engine import train

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SECTIONS = ("model", "curves", "validation", "confusion", "per-class", "calibration", "wrong")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    data = write_noisy_npz(root / "data.npz", 240, seed=0)
    for seed in (0, 1):
        cfg = tiny_run_config(data, train={"epochs": 3, "seed": seed}, data={"cache_dir": str(root / "cache")})
        train(cfg, root / f"run{seed}", quiet=True)
    return root / "run0", root / "run1"


def section(page: str, name: str) -> str:
    """The HTML of the first <section class="name">, up to the next section of its level."""
    start = page.index(f'<section class="{name}"')
    match = re.compile(r"<section class=\"(run|comparison|model|curves|validation|confusion|per-class|calibration|wrong)\"")
    nxt = next((m.start() for m in match.finditer(page, start + 1)), len(page))
    return page[start:nxt]


def pngs(html_text: str) -> list[Image.Image]:
    images = []
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html_text):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        images.append(image)
    return images


def expected_ece(log_probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    probs = log_probs.exp().numpy()
    confidence, predicted = probs.max(1), probs.argmax(1)
    correct = predicted == labels.numpy()
    total = 0.0
    for b in range(bins):
        inside = (confidence >= b / bins) & ((confidence < (b + 1) / bins) | (b == bins - 1))
        if inside.any():
            total += inside.sum() / len(labels) * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def test_one_run_report_shows_every_part(runs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run = runs[0]
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out), "--device", "cpu", "--wrong", "5"]) == 0, capsys.readouterr().err
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r'(src|href)="(?!data:|#)', page) and "<script" not in page and "url(" not in page
    for name in SECTIONS:
        assert f'<section class="{name}"' in page, name
    assert '<section class="comparison"' not in page  # one run: nothing to compare

    model = section(page, "model")
    assert f"{count_params(load_run(run).config.model):,}" in model and "per-layer" in model.lower()
    assert "conv" in model.lower() and "Config (config.yaml)" in model
    summary = json.loads((run / "summary.json").read_text())
    assert f"{100 * summary['best_val_acc']:.2f}%" in model

    curves = pngs(section(page, "curves"))
    assert len(curves) == 1 and curves[0].width > 3 * 300  # epoch, training time, wall-clock time

    predictions = predict_checkpoint(run, device="cpu")
    result = predictions.result
    assert f"accuracy <b>{100 * result.accuracy:.2f}%</b>" in section(page, "validation")
    assert 0 < result.accuracy < 1
    assert len(pngs(section(page, "confusion"))) == 1
    per_class = section(page, "per-class")
    for name, acc in zip(result.classes, result.per_class_accuracy):
        assert f"<td>{name}</td><td>20</td><td>{round(20 * acc)}</td><td>{100 * acc:.2f}%</td>" in per_class
    calibration = section(page, "calibration")
    ece = expected_ece(predictions.log_probs, predictions.labels)
    assert f"Expected calibration error <b>{100 * ece:.2f}%</b>" in calibration and len(pngs(calibration)) == 1

    # The most confidently wrong images: the right ones, most confident first, with labels.
    wrong = section(page, "wrong")
    probs = predictions.log_probs.exp()
    confidence, predicted = probs.max(1)
    mistakes = sorted((i for i in range(len(predicted)) if predicted[i] != predictions.labels[i]),
                      key=lambda i: -float(confidence[i]))
    assert len(mistakes) >= 5
    shown = [int(i) for i in re.findall(r"image (\d+)</figcaption>", wrong)]
    assert shown == mistakes[:5]
    for i, image in zip(shown, pngs(wrong)):
        assert image.size == (16, 16)
        assert np.array_equal(np.asarray(image), predictions.images[i].permute(1, 2, 0).numpy())
    first = mistakes[0]
    assert (f"true <b>{result.classes[predictions.labels[first]]}</b><br>predicted "
            f"<b>{result.classes[predicted[first]]}</b> {100 * float(confidence[first]):.2f}%") in wrong


def test_several_runs_are_compared(runs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "both.html"
    assert main(["report", *map(str, runs), "--out", str(out), "--device", "cpu"]) == 0, capsys.readouterr().err
    page = out.read_text()
    comparison = section(page, "comparison")
    assert page.index('<section class="comparison"') < page.index('<section class="run"')
    rows = re.findall(r"<tr><td>(run\d)</td>", comparison)
    assert rows == ["run0", "run1"]
    for run in runs:
        best = json.loads((run / "summary.json").read_text())["best_val_acc"]
        assert f"{100 * best:.2f}% (epoch" in comparison
    assert len(pngs(comparison)) == 1  # the overlaid curves
    assert page.count('<section class="run"') == 2 and 'href="#run-1"' in page


def test_pflop_axis_from_the_summary_or_the_metrics(runs: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    summary = json.loads((run / "summary.json").read_text())
    recorded = [float(row["train_pflop"]) for row in csv.DictReader((run / "metrics.csv").read_text().splitlines())]
    assert load_run(run).pflop_axis == pytest.approx(recorded, rel=1e-5) and recorded[-1] == pytest.approx(summary["train_pflop"], rel=1e-5)
    # A run that recorded no per-epoch compute: none, or split from the summary by steps.
    metrics = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    columns = [c for c in metrics[0] if c != "train_pflop"]
    (run / "metrics.csv").write_text("\n".join([",".join(columns)] + [
        ",".join(row[c] for c in columns) for row in metrics]) + "\n")
    del summary["train_pflop"]
    (run / "summary.json").write_text(json.dumps(summary))
    assert load_run(run).pflop_axis is None
    summary["train_pflop"] = 0.6
    (run / "summary.json").write_text(json.dumps(summary))
    # 180 training images in batches of 30: 6 steps an epoch, 18 in all; each epoch a third.
    assert summary["steps_run"] == 18
    assert load_run(run).pflop_axis == pytest.approx([0.2, 0.4, 0.6])
    page = write_report([run], tmp_path / "r.html", device="cpu").read_text()
    assert "training compute</td><td>0.6 PFLOP" in page
    assert pngs(section(page, "curves"))[0].width > 4 * 300  # a fourth column of plots: PFLOP


def test_without_data_and_bad_input(runs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run = tmp_path / "moved"
    shutil.copytree(runs[0], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["path"] = str(tmp_path / "gone.npz")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out), "--device", "cpu"]) == 0
    page = out.read_text()
    validation = section(page, "validation")
    assert "gone.npz is not here; pass --data PATH" in validation and "<img" not in validation
    assert '<section class="curves"' in page and '<section class="model"' in page
    # With --data the validation parts come back.
    data = runs[0].parent / "data.npz"
    assert main(["report", str(run), "--out", str(out), "--device", "cpu", "--data", str(data)]) == 0
    assert '<section class="calibration"' in out.read_text()
    capsys.readouterr()

    def fails(*argv: str) -> str:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.startswith("budgetnet: error: ") and err.count("\n") == 1, err
        return err

    assert "does not exist" in fails("report", str(run), "--out", str(tmp_path / "x.html"), "--data", str(tmp_path / "no.npz"))
    assert "not a budgetnet run directory" in fails("report", str(tmp_path), "--out", str(tmp_path / "x.html"))
    assert "is a folder" in fails("report", str(run), "--out", str(tmp_path))
    assert not (tmp_path / "x.html").exists()


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _chromium(browser: str, page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'profile'}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(_browser() is None, reason="no Chromium or Chrome to render with (.ci/run installs Debian's chromium)")
def test_report_renders_in_headless_chromium(runs: tuple[Path, Path], tmp_path: Path) -> None:
    browser = _browser()
    assert browser is not None
    # The console check must be able to see an error: a page that makes one.
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><html><body><script>console.error("control error")</script></body></html>')
    assert any("control error" in m for m in console_messages(_chromium(browser, control, tmp_path, "--dump-dom").stderr))

    report = write_report(list(runs), tmp_path / "report.html", device="cpu")
    shot = tmp_path / "shot.png"
    done = _chromium(browser, report, tmp_path, f"--screenshot={shot}", "--window-size=1400,5000")
    assert shot.is_file(), done.stderr[-2000:]
    assert console_messages(done.stderr) == []
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (5000, 1400) and pixels.std() > 10  # something was drawn, not a blank page

    # Every image decodes and every section is laid out: a copy of the page checks itself.
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", (
        "<script>addEventListener('load', () => {"
        "const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;"
        "const shown = [...document.querySelectorAll('section')].filter(s => s.offsetHeight > 0).map(s => s.className);"
        "document.body.dataset.broken = broken; document.body.dataset.images = document.images.length;"
        "document.body.dataset.shown = shown.join(' ');});</script></body>")))
    dom = _chromium(browser, probe, tmp_path, "--dump-dom").stdout
    attrs = dict(re.findall(r'data-(broken|images|shown)="([^"]*)"', dom))
    assert attrs["broken"] == "0" and int(attrs["images"]) >= 10, attrs
    shown = attrs["shown"].split()
    assert shown.count("run") == 2 and "comparison" in shown
    for name in SECTIONS:
        assert shown.count(name) == 2, name
