"""Input fuzzing with Hypothesis: run configs, CLI values, image files and archives.

The contract under test: whatever the input, budgetnet either succeeds or raises one
BudgetnetError (the CLI: exit 2 and one line on stderr), never a traceback and never a hang,
and a failed data load leaves no half-written cache entry behind. The examples per test are
sized so that the module runs in about 30 s on the shared 2-core machine; the number run is
printed at the end (pytest -s).

The gaps it once pinned with strict xfails (alias bombs, absurd sizes and exponents) are
fixed; their tests are at the bottom.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import make_synthetic, write_cifar_archive, write_cifar_folder, write_npz
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from budgetnet.cli import main
from budgetnet.config import RunConfig, load_config
from budgetnet.data import DataConfig, open_source, prepare_data
from budgetnet.data import sources as sources_module
from budgetnet.errors import BudgetnetError

# Pillow warns (and carries on) about damaged metadata in images it can still decode.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

CASES: Counter[str] = Counter()


def fuzz(examples: int) -> settings:
    """`examples` per test; BUDGETNET_FUZZ_SCALE=10 fuzzes ten times longer (not in CI)."""
    scale = float(os.environ.get("BUDGETNET_FUZZ_SCALE", "1"))
    return settings(max_examples=max(1, round(examples * scale)), deadline=None,
                    suppress_health_check=list(HealthCheck))


HANG_SECONDS = 20


@contextlib.contextmanager
def time_limit(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Fail (rather than hang the suite) if one case runs longer than `seconds`."""
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"one fuzz case ran longer than {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No network (a fuzzed `download: true`), no thread-count leak (a fuzzed `threads`), and
    any run directory made relative to the working directory lands in tmp_path."""
    def no_download(*args: Any, **kwargs: Any) -> None:
        raise BudgetnetError("downloads are disabled in the fuzz tests")

    monkeypatch.setattr(sources_module, "download_cifar", no_download)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_cli(argv: list[str]) -> tuple[int, str]:
    """budgetnet in-process; (exit code, stderr). A traceback would propagate and fail the test."""
    err, out = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with redirect_stderr(err), redirect_stdout(out), time_limit():
            code = main(argv)
    finally:
        torch.set_num_threads(threads)
    return code, err.getvalue()


def assert_one_error_line(code: int, err: str) -> None:
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("budgetnet: error: "), err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- run configs

def _keys(model: type) -> list[str]:
    return list(model.model_fields)


SECTIONS = {name: _keys(field.annotation) for name, field in RunConfig.model_fields.items()
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")}
TOP_KEYS = _keys(RunConfig)
ALL_KEYS = sorted({k for keys in SECTIONS.values() for k in keys} | set(TOP_KEYS))

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=16)
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2, 3, 2**31, 2**63, -(2**63), 10**30, 65_537]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e99", "5M", "-5", "nan", "inf", "", "auto", "cpu", "cuda", "mps", "sgd", "adamw", "global",
                     "名字", "../../etc", "basic", "relu", "stretch", "val_acc", "1e400", "0x10", "1_000", "true",
                     "ℵ₀", "🙂", "a" * 300]),
    text,
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(ALL_KEYS) | text, inner, max_size=4),
    max_leaves=10,
)
nested = st.integers(1, 150).map(lambda depth: _nest(depth))


def _nest(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"model": value}
    return value


MODEL_SIZE_LIMIT = 200


def _huge_model(spec: Any) -> bool:
    """Widths, classes, kernels or blocks that validate (the spec's bounds are generous) but
    make even the meta-device parameter count take seconds: kept out of the fuzz cases for
    speed; the bounds themselves are tested at the bottom."""
    sizes = [*spec.channels, spec.classes, spec.stem_width or 0, spec.stem_kernel, spec.skip_kernel,
             *(spec.block_kernels or []), sum(spec.blocks)]
    return max(sizes) > MODEL_SIZE_LIMIT


def _valid_base(data_path: str) -> dict[str, Any]:
    return {
        "name": "fuzz",
        "model": {"preset": None, "blocks": [1], "channels": [8], "classes": 3, "input_size": 8},
        "data": {"path": data_path, "val_size": 2, "input_size": 8},
        "train": {"epochs": 1, "batch_size": 4, "threads": 1, "device": "cpu"},
    }


@st.composite
def config_documents(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.sampled_from(["mutated", "mutated", "sections", "junk", "nested", "text", "bytes", "tagged"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "tagged":
        return draw(st.sampled_from([
            "!!python/object/apply:os.system ['touch pwned']",
            "model: !!python/name:os.system",
            "train: !!binary aGVsbG8=",
            "a: &x [1]\nb: *y",
            "{a: 1, a: 2}",
            "? [1, 2]\n: 3",
            "--- 1\n--- 2",
            "%YAML 9.9\n---\na: 1",
            "model:\n\t- 1",
            "\ufeffname: bom",
        ]))
    if kind == "nested":
        doc: Any = draw(nested)
    elif kind == "junk":
        doc = draw(junk)
    elif kind == "sections":
        doc = draw(st.dictionaries(st.sampled_from(TOP_KEYS) | text, junk, max_size=5))
    else:
        doc = _valid_base("/nonexistent/fuzz.npz")
        for _ in range(draw(st.integers(1, 4))):
            section = draw(st.sampled_from(sorted(SECTIONS) + ["name", "budget", "allow_over_budget"]))
            if section in SECTIONS:
                doc.setdefault(section, {})
                if isinstance(doc[section], dict) and draw(st.booleans()):
                    doc[section][draw(st.sampled_from(SECTIONS[section]) | text)] = draw(junk)
                else:
                    doc[section] = draw(junk)
            else:
                doc[section] = draw(junk)
    return yaml.safe_dump(doc, allow_unicode=draw(st.booleans()), sort_keys=False)


@fuzz(200)
@given(document=config_documents(), through_cli=st.integers(0, 3))
def test_fuzzed_config_files_load_or_fail_with_one_line(document: str | bytes, through_cli: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.yaml"
        path.write_bytes(document if isinstance(document, bytes) else document.encode("utf-8", "surrogatepass"))
        CASES["config files (load_config)"] += 1
        cfg = None
        try:
            with time_limit():
                cfg = load_config(path)
        except BudgetnetError as exc:
            assert str(exc) and len(str(exc)) < 5000
        else:
            assert isinstance(cfg, RunConfig)
        if through_cli:  # a quarter of them: typer rebuilds the whole CLI on each call (~0.1 s)
            return
        if cfg is not None and _huge_model(cfg.model):
            CASES["config files skipped: model too big to count quickly"] += 1
            return
        # The same file through the CLI: never a traceback; the data path is fake, so exit 2.
        CASES["config files (budgetnet train --config)"] += 1
        code, err = run_cli(["train", "--config", str(path), "--data", str(Path(tmp) / "none.npz"),
                             "--out", str(Path(tmp) / "run"), "--quiet"])
        assert_one_error_line(code, err)


VALUE_OPTIONS = [
    "--epochs", "--batch-size", "--seed", "--lr", "--weight-decay", "--label-smoothing", "--threads",
    "--checkpoint-every", "--max-train-seconds", "--val-size", "--split-seed", "--subset", "--input-size",
    "--classes", "--dropout", "--stem-width", "--stem-kernel", "--skip-kernel", "--head-scale", "--blocks",
    "--channels", "--strides", "--stage-kinds", "--block-kernels", "--pool", "--block", "--activation", "--budget",
    "--name", "--optimizer", "--schedule", "--precision", "--device", "--on-nan", "--resize", "--preset", "--recipe",
    "--patience", "--config",
]
MODEL_SIZE_OPTIONS = {"--classes", "--channels", "--stem-width", "--blocks", "--stem-kernel", "--skip-kernel",
                      "--block-kernels"}


def _huge_model_option(option: str, value: str) -> bool:
    if option not in MODEL_SIZE_OPTIONS:
        return False
    numbers = []
    for part in value.split(","):
        with contextlib.suppress(ValueError):
            numbers.append(int(part))
    return sum(n for n in numbers if n > 0) > MODEL_SIZE_LIMIT


FLAGS = ["--allow-over-budget", "--compile", "--no-compile", "--no-cache", "--json", "--quiet"]
cli_values = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats().map(repr),
    st.sampled_from(["abc", "1e99", "-5", "0", "-0", "nan", "inf", "-inf", "", " ", "名字", "🙂", "1,2,3", "-1,0",
                     "8,16", "8,,16", "5M", "0x10", "1_000", "None", "null", "true", "--epochs", "9" * 400,
                     "1e-400", "2**10", "global", "basic", "flagship", "../x"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)


@fuzz(100)
@given(options=st.lists(st.tuples(st.sampled_from(VALUE_OPTIONS), cli_values), min_size=1, max_size=5),
       flags=st.lists(st.sampled_from(FLAGS), max_size=2), resume=st.booleans())
def test_fuzzed_cli_values_fail_with_one_line(options: list[tuple[str, str]], flags: list[str], resume: bool) -> None:
    assume(not any(_huge_model_option(o, v) for o, v in options))  # for speed, see _huge_model
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train"]
        for option, value in options:
            argv += [option, value]
        argv += flags
        argv += ["--resume", tmp] if resume else ["--data", str(Path(tmp) / "none.npz"), "--out", str(Path(tmp) / "r")]
        CASES["CLI option values"] += 1
        code, err = run_cli(argv)
        assert_one_error_line(code, err)


# ------------------------------------------------------------------------ images and archives

SIZE = 8


def _image_bytes(fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "gif": "GIF", "webp": "WEBP", "tif": "TIFF", "ppm": "PPM"}


# Edits that turn a valid file into an adversarial one that keeps enough of a real header to
# reach the decoders: a few bytes flipped, the file cut short, bytes inserted, a field maxed.
mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "flip", "flip", "truncate", "insert", "max"]),
              st.integers(0, 2**31), st.integers(1, 255), st.binary(min_size=1, max_size=8)),
    min_size=1, max_size=4,
)


def mutate(raw: bytes, edits: list[tuple[str, int, int, bytes]]) -> bytes:
    data = bytearray(raw)
    for how, where, mask, insert in edits:
        if not data:
            break
        # Headers are where parsers trust the file most: aim half of the edits at the first 64 bytes.
        at = where % min(len(data), 64) if where % 2 else where % len(data)
        if how == "flip":
            data[at] ^= mask
        elif how == "truncate":
            del data[at:]
        elif how == "insert":
            data[at:at] = insert
        else:
            data[at:at + 4] = b"\xff\xff\xff\x7f"
    return bytes(data)


@st.composite
def image_files(draw: st.DrawFn) -> tuple[str, bytes]:
    ext = draw(st.sampled_from(sorted(FORMATS)))
    kind = draw(st.sampled_from(["valid", "mutated", "mutated", "random", "other-size"]))
    if kind == "random":
        return ext, draw(st.binary(max_size=300))
    if kind == "other-size":
        rng = np.random.default_rng(draw(st.integers(0, 100)))
        h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format=FORMATS[ext])
        return ext, buf.getvalue()
    raw = _image_bytes(FORMATS[ext], draw(st.integers(0, 3)))
    return ext, raw if kind == "valid" else mutate(raw, draw(mutations))


def _tmp_leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name]


def _prepare_or_refuse(cfg: DataConfig, splits: tuple[str, ...], source: Path | None = None) -> None:
    """prepare_data (after open_source(`source`), when given) either raises a BudgetnetError or
    hands over well-formed splits that it cached; no temp file is left in the cache either way."""
    cache = Path(cfg.cache_dir)
    try:
        with time_limit():
            if source is not None:
                open_source(source).classes  # noqa: B018 - reading the classes is what may fail
            data = prepare_data(cfg, "cpu", splits=splits)
    except BudgetnetError as exc:
        assert str(exc)
    else:
        for split in splits:
            part = getattr(data, split)
            if part is not None:
                assert part.x.dtype == torch.uint8 and part.x.shape[1:] == (3, cfg.input_size, cfg.input_size)
                assert len(part.x) == len(part.y) and int(part.y.min()) >= 0
                assert int(part.y.max()) < len(data.classes)
        if cfg.subset is None:  # whole splits were decoded, so they were cached: the check below sees the writes
            assert any(cache.rglob("*.npy")), "loaded, but nothing was cached"
    assert not _tmp_leftovers(cache), _tmp_leftovers(cache)


def _prepare(path: Path, cache: Path, draw: st.DrawFn) -> None:
    cfg = DataConfig(path=str(path), input_size=SIZE, val_size=draw(st.integers(0, 3)),
                     resize=draw(st.sampled_from([None, "stretch", "center-crop"])),
                     subset=draw(st.sampled_from([None, None, 4])), cache_dir=str(cache))
    _prepare_or_refuse(cfg, draw(st.sampled_from([("train", "val"), ("train",), ("test",), ("train", "val", "test")])))


@fuzz(100)
@given(data=st.data(), files=st.lists(image_files(), min_size=1, max_size=5), as_zip=st.booleans(),
       by_split=st.booleans())
def test_fuzzed_image_files_in_a_folder_or_zip(data: st.DataObject, files: list[tuple[str, bytes]],
                                               as_zip: bool, by_split: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        for i, (ext, raw) in enumerate(files):
            split = "test/" if by_split and i % 3 == 2 else ("train/" if by_split else "")
            path = root / f"{split}c{i % 2}" / f"{i}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(raw)
        target = root
        if as_zip:
            target = Path(tmp) / "images.zip"
            with zipfile.ZipFile(target, "w", data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as zf:
                for p in sorted(root.rglob("*")):
                    if p.is_file():
                        zf.write(p, "wrap/" + p.relative_to(root).as_posix())
        CASES["image folders/zips with random or damaged images"] += 1
        _prepare(target, Path(tmp) / "cache", data.draw)


_VALID: dict[str, bytes] = {}


def _valid_archive(kind: str, tmp: Path) -> bytes:
    """A small valid archive of `kind`, made once (so every example mutates the same bytes)."""
    if kind not in _VALID:
        _VALID[kind] = _make_archive(kind, tmp)
    return _VALID[kind]


def _make_archive(kind: str, tmp: Path) -> bytes:
    synth = make_synthetic({"train": 3, "test": 2}, size=SIZE, seed=2)
    if kind == "npz":
        return write_npz(tmp / "valid.npz", synth).read_bytes()
    if kind == "npz-compressed":
        np.savez_compressed(tmp / "valid.npz", x=synth.x["train"], y=synth.y["train"],
                            x_test=synth.x["test"], y_test=synth.y["test"])
        return (tmp / "valid.npz").read_bytes()
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for split in ("train", "test"):
                for i, (img, label) in enumerate(zip(synth.x[split], synth.y[split])):
                    b = io.BytesIO()
                    Image.fromarray(img).save(b, format="PNG")
                    zf.writestr(f"{split}/{synth.classes[label]}/{i}.png", b.getvalue())
        return buf.getvalue()
    folder = write_cifar_folder(tmp / "cifar", make_synthetic({"train": 5, "test": 2}, seed=2))
    return write_cifar_archive(folder, tmp / "valid.tar.gz").read_bytes()


ARCHIVE_SUFFIX = {"npz": ".npz", "npz-compressed": ".npz", "zip": ".zip", "tar.gz": ".tar.gz"}


@fuzz(200)
@given(data=st.data(), kind=st.sampled_from(sorted(ARCHIVE_SUFFIX)), how=st.sampled_from(["mutated", "random"]))
def test_fuzzed_archives(data: st.DataObject, kind: str, how: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        raw = data.draw(st.binary(max_size=400)) if how == "random" else \
            mutate(_valid_archive(kind, tmp_path), data.draw(mutations))
        path = tmp_path / f"fuzzed{ARCHIVE_SUFFIX[kind]}"
        path.write_bytes(raw)
        CASES[f"{how} {kind} archives"] += 1
        # CIFAR images are 32x32: let the archive's size be right so decoding is reached.
        size = 32 if kind == "tar.gz" else SIZE
        cfg = DataConfig(path=str(path), input_size=size, val_size=data.draw(st.integers(0, 2)),
                         cache_dir=str(tmp_path / "cache"))
        _prepare_or_refuse(cfg, data.draw(st.sampled_from([("train", "val"), ("test",)])))


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from([np.uint8, np.uint8, np.int64, np.float32, np.int8, np.bool_, np.uint64, "U3"]))
    shape = draw(st.sampled_from([(0,), (3,), (4, SIZE, SIZE, 3), (4, SIZE, SIZE), (4, SIZE, SIZE, 1),
                                  (3, SIZE, SIZE, 3), (4, 0, 0, 3), (4, 5, 3, 3), (4, SIZE, SIZE, 4), (2, 2),
                                  (4, SIZE, SIZE, 3, 1), ()]))
    if dtype == "U3":
        return np.array(draw(st.lists(st.text(max_size=3), min_size=0, max_size=4)), dtype="U3")
    if dtype == np.bool_:
        return np.zeros(shape, np.bool_)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    fill = draw(st.sampled_from(["small", "small", "extreme", "random"]))
    if fill == "small" or info is None:
        values = np.arange(int(np.prod(shape)), dtype=np.int64) % 3
    elif fill == "extreme":
        values = np.full(int(np.prod(shape)), draw(st.sampled_from([int(info.max), int(info.min), -1, 2**40])))
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    with np.errstate(over="ignore"):
        return np.asarray(values).astype(dtype).reshape(shape)


@fuzz(100)
@given(data=st.data(), content=st.dictionaries(
    st.sampled_from(["x", "y", "x_train", "y_train", "x_test", "y_test", "classes", "other"]), arrays(),
    min_size=1, max_size=5))
def test_fuzzed_npz_arrays(data: st.DataObject, content: dict[str, np.ndarray]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "arrays.npz"
        np.savez(path, **content)
        CASES["npz files with fuzzed arrays"] += 1
        _prepare(path, Path(tmp) / "cache", data.draw)


@fuzz(60)
@given(data=st.data(), which=st.sampled_from(["data_batch_1", "test_batch", "batches.meta"]),
       how=st.sampled_from(["random", "mutated"]))
def test_fuzzed_cifar_batches_in_a_folder(data: st.DataObject, which: str, how: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_cifar_folder(Path(tmp) / "cifar", make_synthetic({"train": 5, "test": 2}, seed=4))
        target = folder / which
        raw = target.read_bytes()
        target.write_bytes(data.draw(st.binary(max_size=300)) if how == "random" else mutate(raw, data.draw(mutations)))
        CASES["CIFAR folders with a damaged batch"] += 1
        cfg = DataConfig(path=str(folder), input_size=32, val_size=2, cache_dir=str(Path(tmp) / "cache"))
        _prepare_or_refuse(cfg, ("train", "val", "test"), source=folder)


# ------------------------------------------------------- once known gaps: bombs, absurd sizes

def _finishes_within(target: Any, seconds: float) -> str:
    """Run `target()` in a forked child; 'ok', 'BudgetnetError', another exception's name, or
    'hang' if it is still running after `seconds`."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def run() -> None:
        try:
            target()
            child.send("ok")
        except BudgetnetError:
            child.send("BudgetnetError")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            child.send(type(exc).__name__)

    proc = ctx.Process(target=run)
    proc.start()
    proc.join(seconds)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return "hang"
    return parent.recv() if parent.poll() else f"exit {proc.exitcode}"


def test_deeply_nested_yaml_is_a_budgetnet_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("model: " + "[" * 1500 + "]" * 1500)
    try:
        load_config(path)
        outcome = "loaded"
    except BudgetnetError:
        outcome = "BudgetnetError"
    except RecursionError:  # caught here only to keep pytest from formatting 1,000 frames
        outcome = "RecursionError"
    assert outcome == "BudgetnetError"


def test_a_yaml_alias_bomb_fails_fast(tmp_path: Path) -> None:
    levels = ["a: &a [" + ",".join(['"x"'] * 9) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(levels) + "\nbudget: *i\n")
    assert _finishes_within(lambda: load_config(path), 2.0) == "BudgetnetError"


@pytest.mark.parametrize("budget", ["1e9999999", "1e999999"])
def test_an_absurd_budget_exponent_fails_fast(budget: str) -> None:
    from budgetnet.models import parse_budget

    assert _finishes_within(lambda: parse_budget(budget), 2.0) == "BudgetnetError"


@pytest.mark.parametrize("option", [["--classes", str(2**63)], ["--channels", str(2**40)], ["--stem-width", str(2**62)]])
def test_an_absurd_model_width_is_a_one_line_error(tmp_path: Path, option: list[str]) -> None:
    code, err = run_cli(["train", "--blocks", "1", "--channels", "8", *option, "--data", str(tmp_path / "none.npz"),
                         "--out", str(tmp_path / "run")])
    assert_one_error_line(code, err)


def test_an_absurd_block_count_fails_fast(tmp_path: Path) -> None:
    argv = ["train", "--blocks", "1000000", "--channels", "8", "--data", str(tmp_path / "none.npz"),
            "--out", str(tmp_path / "run")]
    assert _finishes_within(lambda: os._exit(main(argv)), 3.0) == "exit 2"


def test_zz_report_fuzz_cases() -> None:
    total = sum(CASES.values())
    print(f"\nfuzz cases run: {total}")
    for name, n in sorted(CASES.items()):
        print(f"  {n:5d}  {name}")
    assert total > 0
