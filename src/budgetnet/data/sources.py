"""Readers for every supported dataset format, chosen by what the user's path points at.

Formats (see `open_source`):
- official CIFAR-10 python batches: a `cifar-10-batches-py/` folder (or a folder holding it),
  or the `cifar-10-python.tar.gz` archive (read in place, nothing extracted);
- official CIFAR-100 python files: a `cifar-100-python/` folder (`train`, `test`, `meta`) or
  the `cifar-100-python.tar.gz` archive; each image has a fine label (100 classes, the
  default) and a coarse one (its 20 superclasses, `labels="coarse"`), read by name from
  `fine_labels`/`coarse_labels` and `meta`'s `fine_label_names`/`coarse_label_names`, so one
  set can never pass for the other (a loader yielding the 20 coarse classes has fooled
  published CIFAR-100 results);
- image folders, as a directory or a `.zip`: `<split>/<class>/<image>` with split in
  `train`/`test`, or `<class>/<image>` (all training); one wrapper folder on top is skipped;
- `.npz`: training images in `x`/`y` (or `x_train`/`y_train`), test images in `x_test`/`y_test`,
  optional class names in `classes`; `x` is uint8 N,H,W,3 (or N,H,W / N,H,W,1 for gray).

Every split is read only when asked for, so a source holding just a test split evaluates fine.
Images come out as uint8 NHWC arrays of `input_size` squared (by default the images' own size:
32 for CIFAR, the first training image's for folders and .npz); other sizes are an error
unless `resize` says how to bring them there.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import functools
import hashlib
import io
import multiprocessing
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TimeRemainingColumn,
)

from budgetnet.errors import BudgetnetError

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # numpy 1.26
    from numpy.core import multiarray as _np_multiarray

Resize = Literal["stretch", "center-crop"]
LabelSet = Literal["fine", "coarse"]
Download = Literal["cifar10", "cifar100"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"

SPLITS = ("train", "test")

_DECODE_CHUNK = 512
# Below this many images a process pool costs more to start than it saves.
_POOL_MIN_IMAGES = 4096


def _decode_workers(n_images: int) -> int:
    """Decode processes to use: one per available core (at most 8), when it pays.

    The shared 50,000-JPEG zip decoded in 8-9 s with 2 processes against 15 s with 1 on the
    2-core machine; with both cores busy elsewhere they gain nothing, and lose nothing."""
    if n_images < _POOL_MIN_IMAGES or sys.platform != "linux":  # fork is safe on Linux only
        return 1
    return min(8, len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class ImageArrays:
    """Decoded images of one split: `x` uint8 (N, H, W, 3), `y` int64 (N,)."""

    x: np.ndarray
    y: np.ndarray


@contextlib.contextmanager
def _progress(description: str, total: int | None, *, download: bool = False
              ) -> Iterator[Callable[[int], None]]:
    """A transient Rich bar on stderr (stdout stays clean for --json); silent when not a TTY.

    Yields `advance(n)`.
    """
    console = Console(stderr=True)
    counter = DownloadColumn() if download else MofNCompleteColumn()
    with Progress("[progress.description]{task.description}", BarColumn(), counter,
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Source(ABC):
    """A dataset on disk. Construction is cheap; splits are listed and decoded on demand."""

    format: str
    # Which of the dataset's label sets the labels are (CIFAR-100: fine or coarse); None where
    # it has one. Part of the cache key, so the two sets never share cached arrays.
    label_set: LabelSet | None = None

    def __init__(self, path: Path, *, resize: Resize | None, input_size: int | None) -> None:
        self.path = path
        self.resize = resize
        self._input_size = input_size

    @functools.cached_property
    def input_size(self) -> int:
        """Side of the images `load` returns: the one asked for, else the images' own."""
        return self._input_size if self._input_size is not None else self.native_size

    @property
    @abstractmethod
    def native_size(self) -> int:
        """Side of the dataset's own (square) images."""

    @functools.cached_property
    def content_hash(self) -> str:
        """sha256 of the file bytes (single files) or of the file listing (folders)."""
        return _sha256_file(self.path)

    @property
    @abstractmethod
    def splits(self) -> tuple[str, ...]:
        """The splits present, among `train` and `test`."""

    @property
    @abstractmethod
    def classes(self) -> list[str]:
        """Class names; label i is `classes[i]`."""

    @abstractmethod
    def labels(self, split: str) -> np.ndarray:
        """Labels of `split` (int64), as cheaply as the format allows (no image decoding)."""

    @abstractmethod
    def load(self, split: str, indices: np.ndarray | None = None) -> ImageArrays:
        """Decode `split`, or only the images at `indices` (in that order)."""

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            have = ", ".join(self.splits) or "none"
            raise BudgetnetError(
                f"{self.path} has no {split} split (it has: {have}); point --data at a dataset "
                f"that contains one."
            )

    def _fit_arrays(self, x: np.ndarray, what: str) -> np.ndarray:
        """Decoded NHWC arrays at the input size; a no-op (no copy) when they already are."""
        size = self.input_size
        if x.shape[1:3] == (size, size):
            return x
        out = np.empty((len(x), size, size, 3), np.uint8)
        for i, image in enumerate(x):
            out[i] = _fit_image(Image.fromarray(image), f"#{i} of {what}", size, self.resize)
        return out


def _fit_image(image: Image.Image, name: str, size: int, resize: Resize | None) -> np.ndarray:
    """Bring one image to RGB size x size, or refuse if no resize mode is set."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        if resize is None:
            w, h = image.size
            raise BudgetnetError(
                f"image {name} is {w}x{h} but the input size is {size}x{size}; pass "
                f"--resize stretch or --resize center-crop to resize images on load."
            )
        if resize == "stretch":
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        else:  # center-crop: scale the shorter side to `size`, cut the middle square
            image = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    return np.asarray(image)


@contextlib.contextmanager
def _opened_image(data: bytes, name: str, where: str | None) -> Iterator[Image.Image]:
    """`data` opened by Pillow; what it cannot open or decode inside the block becomes a
    BudgetnetError naming `name` (in `where`)."""
    full = f"{name} in {where}" if where else name
    try:
        with Image.open(io.BytesIO(data)) as image:
            yield image
    except UnidentifiedImageError:
        raise BudgetnetError(f"{full} is not an image (in no format Pillow reads); remove or "
                             f"replace the file.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BudgetnetError(f"cannot decode image {full} ({exc}); remove or replace the "
                             f"file.") from None


def decode_image(data: bytes, name: str, size: int, resize: Resize | None,
                 where: str | None = None) -> np.ndarray:
    """One encoded image (any format Pillow reads) as uint8 (size, size, 3), fitted by the
    `resize` rule; a BudgetnetError naming `name` (in `where`) when it cannot be."""
    with _opened_image(data, name, where) as image:
        return _fit_image(image, name, size, resize)


def _square_side(width: int, height: int, what: str) -> int:
    if width != height:
        raise BudgetnetError(f"{what} is {width}x{height} and not square, so it cannot set the input size; pass "
                             f"--input-size N with --resize stretch or center-crop to bring the images to N x N.")
    return width


def _decode_images(items: list[tuple[str, bytes]], size: int, resize: Resize | None,
                   where: str) -> np.ndarray:
    """Decode (name, bytes) pairs into one uint8 (N, size, size, 3) array; runs in workers."""
    out = np.empty((len(items), size, size, 3), np.uint8)
    for i, (name, data) in enumerate(items):
        out[i] = decode_image(data, name, size, resize, where)
    return out


# --------------------------------------------------------------------------- CIFAR-10 pickles

def _allowed_globals() -> dict[tuple[str, str], object]:
    # Exactly what numpy arrays inside CIFAR batches need, for pickles written by numpy 1 or 2
    # (and by Python 2, whose pickles name `numpy.core`); `_codecs.encode` is how Python 3's
    # protocol-2 pickles spell bytes. None of these can run code.
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _np_multiarray._reconstruct
        allowed[(module, "scalar")] = _np_multiarray.scalar
    return allowed


class _RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001 - the pure-Python unpickler, see below
    """Unpickles only plain data and numpy arrays: a user's file never gets to run code.

    Built on the pure-Python unpickler, whose memo is a dict: the C one sizes its memo array by
    the largest index a file names, so 20 damaged bytes (`LONG_BINPUT 1298960579`) made it
    allocate gigabytes and spend 90 s. On a real CIFAR batch both take ~0.3 s.
    """

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _unpickle(data: bytes, name: str, kind: str) -> dict:
    try:
        # latin1: Python 2 pickles (the official files) keep numpy buffers as bytes, keys as str.
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # any failure means the file is not a readable CIFAR batch
        raise BudgetnetError(f"cannot read {kind} file {name}: {exc}; the file is corrupt "
                             f"or not a {kind} python file.") from None
    if not isinstance(obj, dict):
        raise BudgetnetError(f"{name} is not a {kind} python file (expected a dict).")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


@dataclass(frozen=True)
class _CifarKind:
    """Where CIFAR-10 and CIFAR-100 differ: names of the folder, archive and files, and the
    keys their labels and class names are stored under."""

    name: str
    key: str  # in format names: cifar10, cifar100
    folder: str
    archive: str
    files: dict[str, tuple[str, ...]]
    listing: str  # the files, for messages
    meta: str
    url: str
    md5: str

    def label_keys(self, label_set: LabelSet | None) -> tuple[str, str]:
        """The batch key of the labels and the meta key of their names."""
        if label_set is None:
            return "labels", "label_names"
        return f"{label_set}_labels", f"{label_set}_label_names"


CIFAR10 = _CifarKind("CIFAR-10", "cifar10", CIFAR10_FOLDER, CIFAR10_ARCHIVE,
                     {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
                     "data_batch_1..5 or test_batch", "batches.meta", CIFAR10_URL, CIFAR10_MD5)
CIFAR100 = _CifarKind("CIFAR-100", "cifar100", CIFAR100_FOLDER, CIFAR100_ARCHIVE,
                      {"train": ("train",), "test": ("test",)}, "train or test", "meta", CIFAR100_URL, CIFAR100_MD5)
CIFAR_KINDS = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def _parse_batch(data: bytes, name: str, kind: _CifarKind, label_key: str) -> ImageArrays:
    batch = _unpickle(data, name, kind.name)
    x, y = batch.get("data"), batch.get(label_key)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 \
            or y is None or len(y) != len(x):
        raise BudgetnetError(f"{name} is not a {kind.name} python file (expected uint8 'data' of "
                             f"shape (N, 3072) and N {label_key!r}).")
    return ImageArrays(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(y, np.int64))


def _parse_meta(data: bytes, name: str, kind: _CifarKind, names_key: str) -> list[str]:
    names = _unpickle(data, name, kind.name).get(names_key)
    if not isinstance(names, list) or not names:
        raise BudgetnetError(f"{name} has no {names_key!r}; it is not {kind.name}'s {kind.meta}.")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


class _CifarSource(Source):
    """Shared logic of the extracted folder and the archive: only how bytes are read differs."""

    def __init__(self, path: Path, *, resize: Resize | None, input_size: int | None,
                 labels: LabelSet | None) -> None:
        super().__init__(path, resize=resize, input_size=input_size)
        self._labels = labels
        self._parsed: dict[str, ImageArrays] = {}  # labels() then load() unpickle once

    @property
    @abstractmethod
    def kind(self) -> _CifarKind:
        """CIFAR-10 or CIFAR-100."""

    @property
    def label_set(self) -> LabelSet | None:  # type: ignore[override]
        if self.kind is CIFAR10:
            if self._labels is not None:
                raise BudgetnetError(f"--labels {self._labels} chooses between CIFAR-100's fine and coarse "
                                     f"labels, but {self.path} is CIFAR-10, which has one set; drop --labels.")
            return None
        return self._labels or "fine"

    @property
    def native_size(self) -> int:
        return 32

    @abstractmethod
    def _members(self) -> set[str]:
        """Base names of the CIFAR files present."""

    @abstractmethod
    def _read(self, names: Sequence[str]) -> list[bytes]:
        """Bytes of the named CIFAR files, in order."""

    @functools.cached_property
    def splits(self) -> tuple[str, ...]:
        present, kind = self._members(), self.kind
        found = []
        for split, files in kind.files.items():
            missing = [f for f in files if f not in present]
            if len(missing) < len(files):  # partially there: an interrupted copy or download
                if missing:
                    raise BudgetnetError(f"{self.path} lacks {', '.join(missing)}; copy or "
                                         f"download the complete {kind.name} python version.")
                found.append(split)
        if not found:
            raise BudgetnetError(f"{self.path} holds no {kind.name} batches ({kind.listing}).")
        if kind.meta not in present:
            raise BudgetnetError(f"{self.path} lacks {kind.meta} (the class names); copy the "
                                 f"complete {kind.name} python version.")
        return tuple(found)

    @functools.cached_property
    def classes(self) -> list[str]:
        self.splits  # noqa: B018 - validates the layout first, for the clearer error
        kind = self.kind
        names_key = kind.label_keys(self.label_set)[1]
        return _parse_meta(self._read([kind.meta])[0], f"{self.path}/{kind.meta}", kind, names_key)

    def _batches(self, split: str) -> ImageArrays:
        if split in self._parsed:
            return self._parsed[split]
        self._check_split(split)
        kind = self.kind
        files = kind.files[split]
        label_key = kind.label_keys(self.label_set)[0]
        parts = [_parse_batch(d, f"{self.path}/{f}", kind, label_key) for f, d in zip(files, self._read(files))]
        y = np.concatenate([p.y for p in parts])
        if len(y) == 0:
            raise BudgetnetError(f"the {split} split of {self.path} is empty.")
        if y.min() < 0 or y.max() >= len(self.classes):
            raise BudgetnetError(f"{self.path}: {split} {label_key} fall outside the "
                                 f"{len(self.classes)} classes of {kind.meta}.")
        self._parsed[split] = ImageArrays(np.concatenate([p.x for p in parts]), y)
        return self._parsed[split]

    def labels(self, split: str) -> np.ndarray:
        return self._batches(split).y

    def load(self, split: str, indices: np.ndarray | None = None) -> ImageArrays:
        arrays = self._batches(split)
        x, y = (arrays.x, arrays.y) if indices is None else (arrays.x[indices], arrays.y[indices])
        return ImageArrays(np.ascontiguousarray(self._fit_arrays(x, f"{self.path} {split}")), y)


class CifarFolderSource(_CifarSource):
    def __init__(self, path: Path, kind: _CifarKind, *, resize: Resize | None, input_size: int | None,
                 labels: LabelSet | None) -> None:
        super().__init__(path, resize=resize, input_size=input_size, labels=labels)
        self._kind = kind
        self.format = f"{kind.key}-python"

    @property
    def kind(self) -> _CifarKind:
        return self._kind

    @functools.cached_property
    def content_hash(self) -> str:
        return _listing_hash(self.path, self._members())

    def _members(self) -> set[str]:
        return {p.name for p in self.path.iterdir() if p.is_file()}

    def _read(self, names: Sequence[str]) -> list[bytes]:
        return [(self.path / n).read_bytes() for n in names]


# What reading a damaged .tar.gz can raise: a bad header, a bad gzip CRC or a cut-off stream.
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)
# ... and a damaged .zip or .npz member: bad CRC, cut-off or corrupt deflate data, an unknown
# compression method (NotImplementedError), a header numpy cannot parse (ValueError).
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, ValueError)


class CifarArchiveSource(_CifarSource):
    """The official .tar.gz, read in place; CIFAR-10 or CIFAR-100 by the folder it holds."""

    @functools.cached_property
    def _member_paths(self) -> dict[str, dict[str, str]]:
        """Folder -> base name -> archive member name, for the CIFAR folders in the archive;
        one pass over the (gzip, so sequential) archive."""
        out: dict[str, dict[str, str]] = {}
        folders = {k.folder for k in CIFAR_KINDS.values()}
        try:  # a damaged archive fails here, member by member, not only when it is opened
            with self._open() as tar:
                for member in tar:
                    _check_member_name(member.name, self.path)
                    path = PurePosixPath(member.name)
                    if member.isfile() and path.parent.name in folders:
                        out.setdefault(path.parent.name, {})[path.name] = member.name
        except _ARCHIVE_ERRORS as exc:
            raise BudgetnetError(f"cannot read archive {self.path}: {exc}; download it again.") from None
        return out

    @functools.cached_property
    def kind(self) -> _CifarKind:
        found = [k for k in CIFAR_KINDS.values() if k.folder in self._member_paths]
        if len(found) != 1:
            has = "both" if found else "neither"
            raise BudgetnetError(f"{self.path} holds {has} of {CIFAR10_FOLDER}/ and {CIFAR100_FOLDER}/; "
                                 f"pass the official CIFAR-10 or CIFAR-100 python archive.")
        return found[0]

    @property
    def format(self) -> str:  # type: ignore[override]
        return f"{self.kind.key}-python-archive"

    def _members(self) -> set[str]:
        return set(self._member_paths[self.kind.folder])

    def _open(self) -> tarfile.TarFile:
        try:
            return tarfile.open(self.path, "r:gz")
        except _ARCHIVE_ERRORS as exc:
            raise BudgetnetError(f"cannot read archive {self.path}: {exc}; download it again.") \
                from None

    def _read(self, names: Sequence[str]) -> list[bytes]:
        members = self._member_paths[self.kind.folder]
        wanted = {members[n]: n for n in names}
        found: dict[str, bytes] = {}
        try:
            with self._open() as tar:  # one sequential pass; seeking back in gzip re-decompresses
                for member in tar:
                    if member.name in wanted:
                        found[wanted[member.name]] = tar.extractfile(member).read()
        except _ARCHIVE_ERRORS as exc:
            raise BudgetnetError(f"cannot read archive {self.path}: {exc}; download it again.") \
                from None
        return [found[n] for n in names]


# ------------------------------------------------------------------------------ image folders

@functools.cache
def _image_extensions() -> frozenset[str]:
    Image.init()  # registers every plugin, so "any format Pillow reads" is honoured
    return frozenset(Image.registered_extensions())


def _check_member_name(name: str, archive: Path) -> None:
    """Refuse archive members that would land outside the archive's folder if extracted."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":") or ".." in posix.split("/"):
        raise BudgetnetError(f"archive {archive} contains the member {name!r}, whose path "
                             f"escapes the archive's folder; refusing to read the archive.")


def _listing_hash(root: Path, names: Iterable[str]) -> str:
    # A folder is identified by its sorted (relative path, size, mtime) list rather than by its
    # bytes: for the 50,000-file CIFAR folder that takes 0.25 s against 1.9 s to read and hash
    # every file (even from the page cache), and any edit, copy (without -p) or replacement
    # changes size or mtime; a same-size edit that also forges the mtime is the one blind spot,
    # and --no-cache covers it.
    digest = hashlib.sha256()
    base = str(root)
    for name in sorted(names):
        st = os.stat(os.path.join(base, name))
        digest.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class _Layout:
    classes: list[str]
    members: dict[str, list[tuple[str, int]]]  # split -> sorted (member name, label)


def _parse_layout(root_name: str, files: list[str], dirs: set[str]) -> _Layout:
    """Split/class structure of an image folder from its relative file and folder paths."""
    exts = _image_extensions()

    def visible(p: str) -> bool:  # string tests, not PurePosixPath: 50,000 names add up
        return "/." not in "/" + p and "__MACOSX/" not in p + "/"

    files = [f for f in files if visible(f)]
    images = [f for f in files if os.path.splitext(f)[1].lower() in exts]
    # Every folder that holds something, so a class folder with no image is still noticed.
    folders = {d for d in dirs if visible(d)} | {f.rpartition("/")[0] for f in files if "/" in f}
    if not images:
        raise BudgetnetError(f"no images found in {root_name}; expected <class>/<image> or "
                             f"<split>/<class>/<image> folders.")

    prefix = ""
    while True:  # skip a single wrapper folder, e.g. cifar10/ in cifar10/train/<class>/x.jpg
        tops = {p.split("/")[0] for p in images} | {d.split("/")[0] for d in folders}
        top = next(iter(tops))
        if len(tops) != 1 or top in SPLITS or any(p.count("/") < 2 for p in images):
            break
        prefix += top + "/"
        images = [p[len(top) + 1:] for p in images]
        folders = {d[len(top) + 1:] for d in folders if d.startswith(top + "/")}

    tops = {p.split("/")[0] for p in images} | {d.split("/")[0] for d in folders}
    by_split = any(t in SPLITS for t in tops)
    if by_split and (extra := sorted(tops - set(SPLITS))):
        raise BudgetnetError(f"{root_name}: unexpected folder {prefix}{extra[0]}/ next to the "
                             f"split folders; only train/ and test/ are read.")
    depth = 2 if by_split else 1  # of class folders
    grouped: dict[str, dict[str, list[str]]] = {}
    for folder in folders:
        parts = folder.split("/")
        if len(parts) == depth:
            split, cls = (parts[0], parts[1]) if by_split else ("train", parts[0])
            grouped.setdefault(split, {}).setdefault(cls, [])
    for p in images:
        parts = p.split("/")
        if len(parts) != depth + 1:
            raise BudgetnetError(
                f"{root_name}: image {prefix}{p} is not directly inside a class folder; expected "
                f"<class>/<image> or <split>/<class>/<image>.")
        split, cls = (parts[0], parts[1]) if by_split else ("train", parts[0])
        grouped.setdefault(split, {}).setdefault(cls, []).append(prefix + p)

    for split, per_class in grouped.items():
        for cls, names in per_class.items():
            if not names:
                where = f"{split}/{cls}" if by_split else cls
                raise BudgetnetError(f"{root_name}: class folder {prefix}{where}/ has no images; "
                                     f"add images or remove the folder.")
    main = "train" if "train" in grouped else "test"
    classes = sorted(grouped[main])
    for split, per_class in grouped.items():
        if unknown := sorted(set(per_class) - set(classes)):
            raise BudgetnetError(f"{root_name}: the {split} split has class {unknown[0]!r}, which "
                                 f"the {main} split lacks; both must use the same classes.")
    label = {c: i for i, c in enumerate(classes)}
    members = {
        split: sorted((n, label[c]) for c, names in per_class.items() for n in names)
        for split, per_class in grouped.items()
    }
    return _Layout(classes, members)


class _ImageFolderBase(Source):
    @abstractmethod
    def _layout_inputs(self) -> tuple[list[str], set[str]]:
        """Relative posix paths of all files, and of all folders."""

    @abstractmethod
    def _read(self, name: str) -> bytes:
        """Bytes of one member."""

    @functools.cached_property
    def _layout(self) -> _Layout:
        files, dirs = self._layout_inputs()
        return _parse_layout(str(self.path), files, dirs)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if s in self._layout.members)

    @property
    def classes(self) -> list[str]:
        return self._layout.classes

    def labels(self, split: str) -> np.ndarray:
        self._check_split(split)
        return np.array([label for _, label in self._layout.members[split]], np.int64)

    @functools.cached_property
    def native_size(self) -> int:
        """The side of the first image of the first split (the others must match or be resized)."""
        name = self._layout.members[self.splits[0]][0][0]
        with _opened_image(self._read(name), name, str(self.path)) as image:
            return _square_side(*image.size, f"{self.path}: the first image {name}")

    def load(self, split: str, indices: np.ndarray | None = None) -> ImageArrays:
        self._check_split(split)
        members = self._layout.members[split]
        if indices is not None:
            members = [members[i] for i in indices]
        x = np.empty((len(members), self.input_size, self.input_size, 3), np.uint8)
        chunks = range(0, len(members), _DECODE_CHUNK)

        def read(start: int) -> list[tuple[str, bytes]]:
            return [(name, self._read(name)) for name, _ in members[start:start + _DECODE_CHUNK]]

        args = (self.input_size, self.resize, str(self.path))
        workers = _decode_workers(len(members))
        with _progress(f"decoding {split} images", len(members)) as advance:

            def store(first: int, part: np.ndarray) -> None:
                x[first:first + len(part)] = part
                advance(len(part))

            if workers == 1:
                for start in chunks:
                    store(start, _decode_images(read(start), *args))
            else:
                # Processes, not threads: a small JPEG decodes in ~0.2 ms, mostly Python-level
                # Pillow work under the GIL (2 threads measured slower than 1). This process
                # reads the bytes (zip members need its open archive) and keeps at most two
                # chunks per worker in flight, so memory stays bounded.
                context = multiprocessing.get_context("fork")
                with ProcessPoolExecutor(workers, mp_context=context) as pool:
                    pending: collections.deque = collections.deque()
                    for start in chunks:
                        pending.append((start, pool.submit(_decode_images, read(start), *args)))
                        if len(pending) >= 2 * workers:
                            first, future = pending.popleft()
                            store(first, future.result())
                    while pending:
                        first, future = pending.popleft()
                        store(first, future.result())
        return ImageArrays(x, np.array([label for _, label in members], np.int64))


class ImageDirSource(_ImageFolderBase):
    format = "image-folder"

    @functools.cached_property
    def _walk(self) -> tuple[list[str], set[str]]:
        files, dirs = [], set()
        for top, dirnames, filenames in os.walk(self.path):
            rel = Path(top).relative_to(self.path).as_posix()
            base = "" if rel == "." else rel + "/"
            dirs.update(base + d for d in dirnames)
            files.extend(base + f for f in filenames)
        return files, dirs

    @functools.cached_property
    def content_hash(self) -> str:
        return _listing_hash(self.path, self._walk[0])

    def _layout_inputs(self) -> tuple[list[str], set[str]]:
        return self._walk

    def _read(self, name: str) -> bytes:
        try:
            return (self.path / name).read_bytes()
        except OSError as exc:
            raise BudgetnetError(f"cannot read {self.path / name} ({exc.strerror}); check the "
                                 f"file and its permissions.") from None


class ImageZipSource(_ImageFolderBase):
    format = "image-zip"

    @functools.cached_property
    def _zip(self) -> zipfile.ZipFile:
        try:
            archive = zipfile.ZipFile(self.path)
        except _ZIP_ERRORS as exc:
            raise BudgetnetError(f"cannot open zip {self.path}: {exc}; the file is corrupt or "
                                 f"not a zip.") from None
        for name in archive.namelist():  # before anything is read: a hostile zip is refused
            _check_member_name(name, self.path)
        return archive

    def _layout_inputs(self) -> tuple[list[str], set[str]]:
        names = self._zip.namelist()
        return [n for n in names if not n.endswith("/")], {n.rstrip("/") for n in names
                                                             if n.endswith("/")}

    def _read(self, name: str) -> bytes:
        try:
            return self._zip.read(name)
        except _ZIP_ERRORS as exc:
            raise BudgetnetError(f"cannot read {name} from {self.path} ({exc}); the zip is "
                                 f"corrupt.") from None


# -------------------------------------------------------------------------------------- npz

_NPZ_KEYS = {"train": (("x", "y"), ("x_train", "y_train")), "test": (("x_test", "y_test"),)}


class NpzSource(Source):
    format = "npz"

    def __init__(self, path: Path, *, resize: Resize | None, input_size: int | None) -> None:
        super().__init__(path, resize=resize, input_size=input_size)
        self._arrays: dict[str, np.ndarray] = {}

    @functools.cached_property
    def _npz(self) -> np.lib.npyio.NpzFile:
        try:
            return np.load(self.path, allow_pickle=False)  # never unpickle a user's file
        except _ZIP_ERRORS as exc:
            raise BudgetnetError(f"cannot read {self.path}: {exc}; not a valid .npz.") from None

    def _keys(self, split: str) -> tuple[str, str] | None:
        return next((k for k in _NPZ_KEYS[split] if k[0] in self._npz.files), None)

    def _get(self, key: str) -> np.ndarray:
        try:
            return self._npz[key]
        except _ZIP_ERRORS as exc:
            raise BudgetnetError(f"cannot read array {key!r} of {self.path}: {exc}.") from None

    @functools.cached_property
    def splits(self) -> tuple[str, ...]:
        found = tuple(s for s in SPLITS if self._keys(s))
        if not found:
            raise BudgetnetError(f"{self.path} has none of the arrays x/y, x_train/y_train or "
                                 f"x_test/y_test.")
        return found

    @functools.cached_property
    def classes(self) -> list[str]:
        if "classes" in self._npz.files:
            return [str(c) for c in self._get("classes")]
        # Without names, classes are 0..K-1 over all splits, so train and test agree.
        top = max(int(self.labels(s).max(initial=-1)) for s in self.splits)
        return [str(i) for i in range(top + 1)]

    def _images(self, split: str) -> np.ndarray:
        """The split's images, checked to be uint8 (N, H, W), (N, H, W, 1) or (N, H, W, 3);
        read once (the image size and `load` both need them)."""
        if split not in self._arrays:
            x_key = self._keys(split)[0]
            x = self._get(x_key)
            if x.dtype != np.uint8 or not (x.ndim == 3 or (x.ndim == 4 and x.shape[3] in (1, 3))):
                raise BudgetnetError(f"{self.path}: {x_key!r} must be uint8 of shape (N, H, W, 3), "
                                     f"(N, H, W, 1) or (N, H, W); got {x.dtype} {x.shape}.")
            self._arrays[split] = x
        return self._arrays[split]

    @functools.cached_property
    def native_size(self) -> int:
        height, width = self._images(self.splits[0]).shape[1:3]
        return _square_side(width, height, f"{self.path}: each image of {self._keys(self.splits[0])[0]!r}")

    def labels(self, split: str) -> np.ndarray:
        self._check_split(split)
        x_key, y_key = self._keys(split)
        if y_key not in self._npz.files:
            raise BudgetnetError(f"{self.path} has {x_key!r} but no {y_key!r} labels.")
        y = self._get(y_key)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise BudgetnetError(f"{self.path}: {y_key!r} must be a 1-D integer array.")
        if len(y) and y.min() < 0:
            raise BudgetnetError(f"{self.path}: {y_key!r} has negative labels.")
        return y.astype(np.int64)

    def load(self, split: str, indices: np.ndarray | None = None) -> ImageArrays:
        y = self.labels(split)
        x_key = self._keys(split)[0]
        x = self._images(split)
        if len(x) != len(y):
            raise BudgetnetError(f"{self.path}: {x_key!r} has {len(x)} images but the labels "
                                 f"number {len(y)}.")
        if len(x) == 0:
            raise BudgetnetError(f"the {split} split of {self.path} is empty.")
        if y.max() >= len(self.classes):
            raise BudgetnetError(f"{self.path}: {split} labels exceed the {len(self.classes)} "
                                 f"entries of 'classes'.")
        if indices is not None:
            x, y = x[indices], y[indices]
        if x.ndim == 3:
            x = x[..., None]
        if x.shape[3] == 1:
            x = np.repeat(x, 3, axis=3)
        return ImageArrays(np.ascontiguousarray(self._fit_arrays(x, f"{self.path} {split}")), y)


# ------------------------------------------------------------------------------- download

def download_cifar(dest: Path, kind: _CifarKind = CIFAR10, *, url: str | None = None,
                   md5: str | None = None) -> Path:
    """Fetch, verify (MD5) and safely extract the CIFAR-10 or CIFAR-100 python archive into
    `dest` (from `url`, checked against `md5`; by default the official ones).

    Returns the extracted folder (`dest/cifar-10-batches-py` or `dest/cifar-100-python`). Does
    nothing if that folder exists. The archive goes to a temporary file first and the folder
    appears by one rename, so an interrupted run leaves nothing that looks complete.
    """
    url, md5 = url or kind.url, md5 or kind.md5
    target = dest / kind.folder
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        archive = Path(tmp) / kind.archive
        digest = hashlib.md5(usedforsecurity=False)  # an integrity check, allowed under FIPS
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                total = response.headers.get("Content-Length")
                with _progress(f"downloading {kind.name}", int(total) if total else None,
                               download=True) as advance:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        advance(len(chunk))
        except (urllib.error.URLError, OSError) as exc:
            raise BudgetnetError(f"downloading {url} failed ({exc}); check the connection or "
                                 f"download the archive yourself and pass it with --data.") \
                from None
        if digest.hexdigest() != md5:
            raise BudgetnetError(f"the file downloaded from {url} has MD5 {digest.hexdigest()}, "
                                 f"expected {md5}; it is corrupt or not {kind.name}, retry later.")
        _extract_cifar(archive, Path(tmp), kind)
        os.replace(Path(tmp) / kind.folder, target)
    return target


def _extract_cifar(archive: Path, dest: Path, kind: _CifarKind) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member_name(member.name, archive)
            wanted = [m for m in members if m.isfile()
                      and PurePosixPath(m.name).parent.as_posix() == kind.folder]
            # Names are checked and only regular files picked above; where Python has it,
            # filter="data" refuses unsafe paths, links and modes once more.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=wanted, **safe)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BudgetnetError(f"cannot extract {archive}: {exc}.") from None
    if not (dest / kind.folder).is_dir():
        raise BudgetnetError(f"{archive} has no {kind.folder}/ folder; it is not {kind.name}.")


# ------------------------------------------------------------------------------ dispatching

def open_source(
    path: str | Path,
    *,
    resize: Resize | None = None,
    input_size: int | None = None,
    labels: LabelSet | None = None,
    download: bool | Download = False,
    url: str | None = None,
    md5: str | None = None,
) -> Source:
    """Open the dataset at `path`; the format follows from what `path` is (see module doc).

    `input_size` None keeps the images' own size. `labels` picks CIFAR-100's fine (default)
    or coarse labels; any other dataset has one set, and naming one is an error. With
    `download` (True: CIFAR-10, or ``"cifar10"``/``"cifar100"``), a `path` that does not yet
    hold that dataset is the folder to fetch it into (from `url`, checked against `md5`; by
    default the official ones); an existing dataset is used as is.
    """
    path = Path(path).expanduser()
    wanted = CIFAR_KINDS["cifar10" if download is True else download] if download else None
    if wanted is not None and not path.is_file() and _cifar_folder_kind(path) is not wanted \
            and not (path / wanted.folder).is_dir() and not (path / wanted.archive).is_file():
        path = download_cifar(path, wanted, url=url, md5=md5)
    if not path.exists():
        raise BudgetnetError(f"{path} does not exist; pass --data with a dataset path, or "
                             f"--download to fetch CIFAR-10 (--download-cifar100: CIFAR-100).")
    source = _dispatch(path, wanted, resize=resize, input_size=input_size, labels=labels)
    if labels is not None and not isinstance(source, _CifarSource):
        raise BudgetnetError(f"--labels {labels} chooses between CIFAR-100's fine and coarse labels, but "
                             f"{path} is a {source.format} dataset with one set of labels; drop --labels.")
    source.label_set  # noqa: B018 - a CIFAR-10 source refuses --labels here, before any reading
    return source


def _dispatch(path: Path, wanted: _CifarKind | None, *, resize: Resize | None, input_size: int | None,
              labels: LabelSet | None) -> Source:
    kw = {"resize": resize, "input_size": input_size}
    cifar = {**kw, "labels": labels}
    if path.is_dir():
        if (kind := _cifar_folder_kind(path)) is not None:
            return CifarFolderSource(path, kind, **cifar)
        # The parent folder, as torchvision's `root`, holding a CIFAR folder or archive; with
        # both, the one being downloaded, or CIFAR-100 when --labels asks for its label sets.
        held = [k for k in CIFAR_KINDS.values() if (path / k.folder).is_dir() or (path / k.archive).is_file()]
        prefer = wanted or (CIFAR100 if labels is not None else None)
        if prefer in held:
            held = [prefer]
        if len(held) > 1:
            raise BudgetnetError(f"{path} holds both CIFAR-10 and CIFAR-100; point --data at "
                                 f"{path / CIFAR10_FOLDER} or {path / CIFAR100_FOLDER}.")
        if not held:
            return ImageDirSource(path, **kw)
        kind = held[0]
        if (path / kind.folder).is_dir():
            return CifarFolderSource(path / kind.folder, kind, **cifar)
        return CifarArchiveSource(path / kind.archive, **cifar)
    name = path.name.lower()
    if name.endswith(".zip"):
        return ImageZipSource(path, **kw)
    if name.endswith((".tar.gz", ".tgz")):
        return CifarArchiveSource(path, **cifar)
    if name.endswith(".npz"):
        return NpzSource(path, **kw)
    raise BudgetnetError(f"{path} is not a dataset budgetnet reads; use a folder, a .zip of "
                         f"image folders, a CIFAR-10 or CIFAR-100 python .tar.gz or an .npz.")


def _cifar_folder_kind(path: Path) -> _CifarKind | None:
    """CIFAR-10 or CIFAR-100 when `path` is such a folder (one of its batch files is there)."""
    return next((k for k in CIFAR_KINDS.values()
                 if any((path / f).is_file() for files in k.files.values() for f in files)), None)
