"""Every source format, the download, and every kind of bad input (one-line error, exit 2)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    Synthetic,
    encode,
    make_synthetic,
    write_cifar_archive,
    write_cifar_folder,
    write_image_folder,
    zip_folder,
)
from PIL import Image

from budgetnet.cli import main
from budgetnet.data import DataConfig, open_source, prepare_data
from budgetnet.data.sources import CIFAR10_FOLDER
from budgetnet.errors import BudgetnetError

FORMATS = ["image_folder", "image_zip", "cifar_folder", "cifar_archive", "npz_file"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_exact_pixels(fmt: str, request: pytest.FixtureRequest,
                                         synthetic: Synthetic) -> None:
    path = request.getfixturevalue(fmt)
    source = open_source(path)
    assert source.splits == ("train", "test")
    assert source.classes == synthetic.classes
    for split in ("train", "test"):
        arrays = source.load(split)
        # Folder formats list files sorted by path, i.e. by class then name: same order here.
        np.testing.assert_array_equal(arrays.x, synthetic.x[split])
        np.testing.assert_array_equal(arrays.y, synthetic.y[split])


@pytest.mark.parametrize("fmt", FORMATS)
def test_prepare_data_every_format(fmt: str, request: pytest.FixtureRequest) -> None:
    data = prepare_data(DataConfig(path=str(request.getfixturevalue(fmt)), val_size=6), "cpu",
                        splits=("train", "val", "test"))
    assert data.train.x.shape == (18, 3, 32, 32) and data.train.x.dtype.is_floating_point is False
    assert data.val.x.shape == (6, 3, 32, 32) and data.test.x.shape == (12, 3, 32, 32)
    assert data.train.y.dtype == data.val.y.dtype == data.test.y.dtype
    assert data.classes == ["cat", "dog", "frog"]
    assert data.info["counts"]["val"] == {"cat": 2, "dog": 2, "frog": 2}


def test_cifar_parent_folder_and_partial_reads(tmp_path: Path, synthetic: Synthetic) -> None:
    folder = write_cifar_folder(tmp_path / "both", synthetic)
    assert open_source(folder.parent).path == folder  # the torchvision-style root works too

    only_test = write_cifar_folder(tmp_path / "test-only", synthetic, splits=("test",))
    data = prepare_data(DataConfig(path=str(only_test)), "cpu", splits=("test",))
    assert data.train is None and data.mean is None and len(data.test.y) == 12
    with pytest.raises(BudgetnetError, match="no train split"):
        prepare_data(DataConfig(path=str(only_test)), "cpu")


def test_image_folder_test_only_and_class_layout(tmp_path: Path, synthetic: Synthetic) -> None:
    test_only = write_image_folder(tmp_path / "t", synthetic, splits=("test",))
    data = prepare_data(DataConfig(path=str(test_only)), "cpu", splits=("test",))
    assert len(data.test.y) == 12 and data.classes == synthetic.classes

    flat = write_image_folder(tmp_path / "flat", synthetic, splits=("train",)) / "train"
    source = open_source(flat)  # <class>/<image>: everything is training data
    assert source.splits == ("train",)
    with pytest.raises(BudgetnetError, match="has no test split"):
        prepare_data(DataConfig(path=str(flat)), "cpu", splits=("test",))


def test_non_images_hidden_files_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    rgb = np.full((32, 32, 3), 200, np.uint8)
    Image.fromarray(rgb[..., 0]).save(root / "a" / "gray.png")  # L mode
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(root / "a" / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "b" / "p.gif")
    Image.fromarray(rgb).save(root / "b" / "x.bmp")
    (root / "README.txt").write_text("not an image")
    (root / "a" / ".DS_Store").write_bytes(b"\0junk")
    arrays = open_source(root).load("train")
    assert arrays.x.shape == (4, 32, 32, 3) and arrays.y.tolist() == [0, 0, 1, 1]
    assert (arrays.x == 200).all()


def test_resize_modes(tmp_path: Path) -> None:
    root = tmp_path / "big"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        img = np.zeros((48, 64, 3), np.uint8)
        img[:, 8:56] = 255  # a white square (48x48) in the middle, black side bands
        Image.fromarray(img).save(root / cls / "0.png")
    with pytest.raises(BudgetnetError, match=r"a/0.png is 64x48 .* --resize"):
        open_source(root, input_size=32).load("train")
    with pytest.raises(BudgetnetError, match=r"a/0.png is 64x48 and not square.* --input-size N with --resize"):
        open_source(root, resize="stretch").load("train")  # the images' own size cannot be the input size
    stretched = open_source(root, resize="stretch", input_size=32).load("train").x
    cropped = open_source(root, resize="center-crop", input_size=32).load("train").x
    assert stretched.shape == cropped.shape == (2, 32, 32, 3)
    assert stretched[:, :, 0].max() < 50 and cropped.min() > 200  # bands kept vs cut away
    assert open_source(root, resize="stretch", input_size=16).load("train").x.shape[1] == 16


def test_mixed_sizes_rejected_naming_the_file(tmp_path: Path, synthetic: Synthetic) -> None:
    root = write_image_folder(tmp_path / "m", synthetic, splits=("train",))
    Image.fromarray(np.zeros((40, 32, 3), np.uint8)).save(root / "train" / "dog" / "odd.png")
    with pytest.raises(BudgetnetError, match=r"train/dog/odd.png is 32x40"):
        open_source(root).load("train")


def test_npz_variants(tmp_path: Path, synthetic: Synthetic) -> None:
    gray = synthetic.x["train"][..., 0]
    np.savez(tmp_path / "g.npz", x_train=gray, y_train=synthetic.y["train"])
    source = open_source(tmp_path / "g.npz")
    assert source.splits == ("train",) and source.classes == ["0", "1", "2"]
    assert (source.load("train").x == gray[..., None]).all()

    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 2), y=np.array([0, 1]))
    with pytest.raises(BudgetnetError, match="obj.npz"):
        open_source(tmp_path / "obj.npz").load("train")
    np.savez(tmp_path / "f.npz", x=synthetic.x["train"].astype(np.float32),
             y=synthetic.y["train"])
    with pytest.raises(BudgetnetError, match="must be uint8"):
        open_source(tmp_path / "f.npz").load("train")


def test_restricted_unpickler_refuses_code(tmp_path: Path, synthetic: Synthetic) -> None:
    folder = write_cifar_folder(tmp_path, synthetic)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(BudgetnetError, match=r"refusing to load global (posix|os|nt)\.system"):
        open_source(folder).load("train")
    assert not marker.exists()


# ------------------------------------------------------------------------------- download

@pytest.fixture
def served_archive(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, md5) of a synthetic cifar-10-python.tar.gz served by a local HTTP server."""
    site = tmp_path / "site"
    site.mkdir()
    folder = write_cifar_folder(tmp_path / "src", make_synthetic({"train": 5, "test": 2}))
    archive = write_cifar_archive(folder, site / "cifar-10-python.tar.gz")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        yield f"http://127.0.0.1:{server.server_port}/{archive.name}", md5
    finally:
        server.shutdown()
        server.server_close()


def test_download_verifies_and_extracts(tmp_path: Path, served_archive: tuple[str, str]) -> None:
    url, md5 = served_archive
    dest = tmp_path / "dl"
    source = open_source(dest, download=True, url=url, md5=md5)
    assert source.path == dest / CIFAR10_FOLDER and source.splits == ("train", "test")
    assert sorted(p.name for p in dest.iterdir()) == [CIFAR10_FOLDER]  # no archive, no temp
    # Present now: no second download (a dead URL would fail).
    assert open_source(dest, download=True, url="http://127.0.0.1:9/none").path == source.path


def test_download_from_file_url(tmp_path: Path, cifar_archive: Path) -> None:
    md5 = hashlib.md5(cifar_archive.read_bytes()).hexdigest()
    source = open_source(tmp_path / "f", download=True, url=cifar_archive.as_uri(), md5=md5)
    assert len(source.load("test").y) == 12


def test_download_wrong_md5_leaves_nothing(tmp_path: Path, served_archive: tuple[str, str]
                                           ) -> None:
    url, _ = served_archive
    dest = tmp_path / "dl"
    with pytest.raises(BudgetnetError, match="MD5"):
        open_source(dest, download=True, url=url, md5="0" * 32)
    assert list(dest.iterdir()) == []


def test_download_refuses_escaping_tar_member(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/../../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(BudgetnetError, match="escapes"):
        open_source(tmp_path / "dl", download=True, url=archive.as_uri(), md5=md5)
    assert not (tmp_path / "escaped").exists()
    with pytest.raises(BudgetnetError, match="escapes"):  # read in place: refused as well
        open_source(archive).splits  # noqa: B018 - reading the splits is what must fail


# ------------------------------------------------------------------------------ bad inputs

def _cli_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert main(["data", "info", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("budgetnet: error: ")
    return err


def _assert_cache_empty(cache: Path) -> None:
    arrays = cache / "arrays"
    assert not arrays.exists() or list(arrays.iterdir()) == []


def test_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "does not exist" in _cli_error(capsys, "--data", str(tmp_path / "nope"))


def test_no_path_without_download(capsys: pytest.CaptureFixture) -> None:
    assert "--data" in _cli_error(capsys)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_named(tmp_path: Path, synthetic: Synthetic, damage: str,
                             capsys: pytest.CaptureFixture, isolated_cache: Path) -> None:
    root = write_image_folder(tmp_path / "c", synthetic, splits=("train",))
    bad = root / "train" / "dog" / "bad.jpg"
    jpeg = encode(synthetic.x["train"][0], "JPEG")
    bad.write_bytes(b"not a jpeg at all" if damage == "garbage" else jpeg[: len(jpeg) // 2])
    err = _cli_error(capsys, "--data", str(root), "--val-size", "3")
    assert "train/dog/bad.jpg" in err
    _assert_cache_empty(isolated_cache)


def test_zip_slip_refused(tmp_path: Path, synthetic: Synthetic, capsys: pytest.CaptureFixture
                          ) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cat/0.png", encode(synthetic.x["train"][0]))
        zf.writestr("../../outside.png", encode(synthetic.x["train"][1]))
    assert "escapes" in _cli_error(capsys, "--data", str(path))
    assert not (tmp_path.parent / "outside.png").exists()


def test_corrupt_zip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    assert "broken.zip" in _cli_error(capsys, "--data", str(path))


@pytest.mark.parametrize("as_zip", [False, True])
def test_empty_class_folder(tmp_path: Path, synthetic: Synthetic, as_zip: bool,
                            capsys: pytest.CaptureFixture) -> None:
    root = write_image_folder(tmp_path / "e", synthetic, splits=("train",))
    (root / "train" / "zebra").mkdir()
    (root / "train" / "zebra" / "notes.txt").write_text("no images here")
    path = zip_folder(root, tmp_path / "e.zip") if as_zip else root
    assert "train/zebra/ has no images" in _cli_error(capsys, "--data", str(path))


def test_mixed_sizes_cli(tmp_path: Path, synthetic: Synthetic, capsys: pytest.CaptureFixture
                         ) -> None:
    root = write_image_folder(tmp_path / "m", synthetic, splits=("train",))
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "train" / "cat" / "big.png")
    assert "big.png is 40x40" in _cli_error(capsys, "--data", str(root), "--val-size", "3")


@pytest.mark.parametrize("kind", ["folder", "zip", "npz"])
def test_empty_dataset(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture) -> None:
    if kind == "folder":
        path = tmp_path / "empty"
        (path / "train" / "cat").mkdir(parents=True)
        (path / "readme.md").write_text("nothing")
    elif kind == "zip":
        path = tmp_path / "empty.zip"
        zipfile.ZipFile(path, "w").close()
    else:
        path = tmp_path / "empty.npz"
        np.savez(path, x=np.zeros((0, 32, 32, 3), np.uint8), y=np.zeros(0, np.int64))
    err = _cli_error(capsys, "--data", str(path))
    assert "no images" in err or "empty" in err


def test_unsupported_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    assert "not a dataset budgetnet reads" in _cli_error(capsys, "--data", str(path))


def test_unexpected_split_folder(tmp_path: Path, synthetic: Synthetic) -> None:
    root = write_image_folder(tmp_path / "s", synthetic)
    (root / "valid" / "cat").mkdir(parents=True)
    Image.fromarray(synthetic.x["train"][0]).save(root / "valid" / "cat" / "0.png")
    with pytest.raises(BudgetnetError, match="unexpected folder valid/"):
        open_source(root).splits  # noqa: B018 - reading the splits is what must fail


def test_process_pool_decode(image_zip: Path, synthetic: Synthetic, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    from budgetnet.data import sources

    monkeypatch.setattr(sources, "_POOL_MIN_IMAGES", 0)
    monkeypatch.setattr(sources, "_DECODE_CHUNK", 5)  # several chunks, some in flight
    monkeypatch.setattr(sources, "_decode_workers", lambda n: 2)
    arrays = open_source(image_zip).load("train")
    np.testing.assert_array_equal(arrays.x, synthetic.x["train"])
    root = write_image_folder(tmp_path / "p", synthetic, splits=("train",))
    (root / "train" / "frog" / "9999.png").write_bytes(b"broken")
    with pytest.raises(BudgetnetError, match="train/frog/9999.png"):
        open_source(root).load("train")
