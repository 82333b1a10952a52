"""Readers for every supported dataset format, chosen by what the user's path points at.

Formats (see `open_source`):
- official CIFAR-10 python batches: a `cifar-10-batches-py/` folder (or a folder holding it),
  or the `cifar-10-python.tar.gz` archive (read in place, nothing extracted);
- image folders, as a directory or a `.zip`: `<split>/<class>/<image>` with split in
  `train`/`test`, or `<class>/<image>` (all training); one wrapper folder on top is skipped;
- `.npz`: training images in `x`/`y` (or `x_train`/`y_train`), test images in `x_test`/`y_test`,
  optional class names in `classes`; `x` is uint8 N,H,W,3 (or N,H,W / N,H,W,1 for gray).

Every split is read only when asked for, so a source holding just a test split evaluates fine.
Images come out as uint8 NHWC arrays of `input_size` squared; other sizes are an error
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

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_FILES = {"train": _TRAIN_BATCHES, "test": ("test_batch",)}

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

    def __init__(self, path: Path, *, resize: Resize | None, input_size: int) -> None:
        self.path = path
        self.resize = resize
        self.input_size = input_size

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


def decode_image(data: bytes, name: str, size: int, resize: Resize | None,
                 where: str | None = None) -> np.ndarray:
    """One encoded image (any format Pillow reads) as uint8 (size, size, 3), fitted by the
    `resize` rule; a BudgetnetError naming `name` (in `where`) when it cannot be."""
    full = f"{name} in {where}" if where else name
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _fit_image(image, name, size, resize)
    except UnidentifiedImageError:
        raise BudgetnetError(f"{full} is not an image (in no format Pillow reads); remove or "
                             f"replace the file.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BudgetnetError(f"cannot decode image {full} ({exc}); remove or replace the "
                             f"file.") from None


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


def _unpickle(data: bytes, name: str) -> dict:
    try:
        # latin1: Python 2 pickles (the official files) keep numpy buffers as bytes, keys as str.
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # any failure means the file is not a readable CIFAR batch
        raise BudgetnetError(f"cannot read CIFAR-10 batch {name}: {exc}; the file is corrupt "
                             f"or not a CIFAR-10 python batch.") from None
    if not isinstance(obj, dict):
        raise BudgetnetError(f"{name} is not a CIFAR-10 python batch (expected a dict).")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _parse_batch(data: bytes, name: str) -> ImageArrays:
    batch = _unpickle(data, name)
    x, y = batch.get("data"), batch.get("labels")
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 \
            or y is None or len(y) != len(x):
        raise BudgetnetError(f"{name} is not a CIFAR-10 python batch (expected uint8 'data' of "
                             f"shape (N, 3072) and N 'labels').")
    return ImageArrays(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(y, np.int64))


def _parse_meta(data: bytes, name: str) -> list[str]:
    names = _unpickle(data, name).get("label_names")
    if not isinstance(names, list) or not names:
        raise BudgetnetError(f"{name} has no 'label_names'; it is not CIFAR-10's batches.meta.")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


class _CifarSource(Source):
    """Shared logic of the extracted folder and the archive: only how bytes are read differs."""

    def __init__(self, path: Path, *, resize: Resize | None, input_size: int) -> None:
        super().__init__(path, resize=resize, input_size=input_size)
        self._parsed: dict[str, ImageArrays] = {}  # labels() then load() unpickle once

    @abstractmethod
    def _members(self) -> set[str]:
        """Base names of the CIFAR files present."""

    @abstractmethod
    def _read(self, names: Sequence[str]) -> list[bytes]:
        """Bytes of the named CIFAR files, in order."""

    @functools.cached_property
    def splits(self) -> tuple[str, ...]:
        present = self._members()
        found = []
        for split, files in _CIFAR_FILES.items():
            missing = [f for f in files if f not in present]
            if len(missing) < len(files):  # partially there: an interrupted copy or download
                if missing:
                    raise BudgetnetError(f"{self.path} lacks {', '.join(missing)}; copy or "
                                         f"download the complete CIFAR-10 python version.")
                found.append(split)
        if not found:
            raise BudgetnetError(f"{self.path} holds no CIFAR-10 batches (data_batch_1..5 or "
                                 f"test_batch).")
        if "batches.meta" not in present:
            raise BudgetnetError(f"{self.path} lacks batches.meta (the class names); copy the "
                                 f"complete CIFAR-10 python version.")
        return tuple(found)

    @functools.cached_property
    def classes(self) -> list[str]:
        self.splits  # noqa: B018 - validates the layout first, for the clearer error
        return _parse_meta(self._read(["batches.meta"])[0], f"{self.path}/batches.meta")

    def _batches(self, split: str) -> ImageArrays:
        if split in self._parsed:
            return self._parsed[split]
        self._check_split(split)
        files = _CIFAR_FILES[split]
        parts = [_parse_batch(d, f"{self.path}/{f}") for f, d in zip(files, self._read(files))]
        y = np.concatenate([p.y for p in parts])
        if len(y) == 0:
            raise BudgetnetError(f"the {split} split of {self.path} is empty.")
        if y.min() < 0 or y.max() >= len(self.classes):
            raise BudgetnetError(f"{self.path}: {split} labels fall outside the "
                                 f"{len(self.classes)} classes of batches.meta.")
        self._parsed[split] = ImageArrays(np.concatenate([p.x for p in parts]), y)
        return self._parsed[split]

    def labels(self, split: str) -> np.ndarray:
        return self._batches(split).y

    def load(self, split: str, indices: np.ndarray | None = None) -> ImageArrays:
        arrays = self._batches(split)
        x, y = (arrays.x, arrays.y) if indices is None else (arrays.x[indices], arrays.y[indices])
        return ImageArrays(np.ascontiguousarray(self._fit_arrays(x, f"{self.path} {split}")), y)


class CifarFolderSource(_CifarSource):
    format = "cifar10-python"

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
    format = "cifar10-python-archive"

    @functools.cached_property
    def _member_paths(self) -> dict[str, str]:
        """Base name -> archive member name; one pass over the (gzip, so sequential) archive."""
        out = {}
        try:  # a damaged archive fails here, member by member, not only when it is opened
            with self._open() as tar:
                for member in tar:
                    _check_member_name(member.name, self.path)
                    if member.isfile() and PurePosixPath(member.name).parent.name == CIFAR10_FOLDER:
                        out[PurePosixPath(member.name).name] = member.name
        except _ARCHIVE_ERRORS as exc:
            raise BudgetnetError(f"cannot read archive {self.path}: {exc}; download it again.") from None
        return out

    def _members(self) -> set[str]:
        return set(self._member_paths)

    def _open(self) -> tarfile.TarFile:
        try:
            return tarfile.open(self.path, "r:gz")
        except _ARCHIVE_ERRORS as exc:
            raise BudgetnetError(f"cannot read archive {self.path}: {exc}; download it again.") \
                from None

    def _read(self, names: Sequence[str]) -> list[bytes]:
        wanted = {self._member_paths[n]: n for n in names}
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
        x = self._get(x_key)
        if x.dtype != np.uint8 or not (x.ndim == 3 or (x.ndim == 4 and x.shape[3] in (1, 3))):
            raise BudgetnetError(f"{self.path}: {x_key!r} must be uint8 of shape (N, H, W, 3), "
                                 f"(N, H, W, 1) or (N, H, W); got {x.dtype} {x.shape}.")
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

def download_cifar10(dest: Path, *, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5) -> Path:
    """Fetch, verify and safely extract the CIFAR-10 python archive into `dest`.

    Returns `dest/cifar-10-batches-py`. Does nothing if that folder exists. The archive goes to a
    temporary file first and the folder appears by one rename, so an interrupted run leaves
    nothing that looks complete.
    """
    target = dest / CIFAR10_FOLDER
    if target.is_dir():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        archive = Path(tmp) / CIFAR10_ARCHIVE
        digest = hashlib.md5(usedforsecurity=False)  # an integrity check, allowed under FIPS
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                total = response.headers.get("Content-Length")
                with _progress("downloading CIFAR-10", int(total) if total else None,
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
                                 f"expected {md5}; it is corrupt or not CIFAR-10, retry later.")
        _extract_cifar(archive, Path(tmp))
        os.replace(Path(tmp) / CIFAR10_FOLDER, target)
    return target


def _extract_cifar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member_name(member.name, archive)
            wanted = [m for m in members if m.isfile()
                      and PurePosixPath(m.name).parent.as_posix() == CIFAR10_FOLDER]
            # Names are checked and only regular files picked above; where Python has it,
            # filter="data" refuses unsafe paths, links and modes once more.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=wanted, **safe)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BudgetnetError(f"cannot extract {archive}: {exc}.") from None
    if not (dest / CIFAR10_FOLDER).is_dir():
        raise BudgetnetError(f"{archive} has no {CIFAR10_FOLDER}/ folder; it is not CIFAR-10.")


# ------------------------------------------------------------------------------ dispatching

def open_source(
    path: str | Path,
    *,
    resize: Resize | None = None,
    input_size: int = 32,
    download: bool = False,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
) -> Source:
    """Open the dataset at `path`; the format follows from what `path` is (see module doc).

    With `download`, a `path` that is not yet a dataset is the folder to fetch CIFAR-10 into
    (from `url`, checked against `md5`); an existing dataset is used as is.
    """
    path = Path(path).expanduser()
    if download and not path.is_file() and not _is_cifar_folder(path) \
            and not (path / CIFAR10_FOLDER).is_dir() and not (path / CIFAR10_ARCHIVE).is_file():
        path = download_cifar10(path, url=url, md5=md5)
    if not path.exists():
        raise BudgetnetError(f"{path} does not exist; pass --data with a dataset path, or "
                             f"--download to fetch CIFAR-10.")
    kw = {"resize": resize, "input_size": input_size}
    if path.is_dir():
        if _is_cifar_folder(path):
            return CifarFolderSource(path, **kw)
        if (path / CIFAR10_FOLDER).is_dir():  # the parent folder, as torchvision's `root`
            return CifarFolderSource(path / CIFAR10_FOLDER, **kw)
        if (path / CIFAR10_ARCHIVE).is_file():
            return CifarArchiveSource(path / CIFAR10_ARCHIVE, **kw)
        return ImageDirSource(path, **kw)
    name = path.name.lower()
    if name.endswith(".zip"):
        return ImageZipSource(path, **kw)
    if name.endswith((".tar.gz", ".tgz")):
        return CifarArchiveSource(path, **kw)
    if name.endswith(".npz"):
        return NpzSource(path, **kw)
    raise BudgetnetError(f"{path} is not a dataset budgetnet reads; use a folder, a .zip of "
                         f"image folders, a CIFAR-10 python .tar.gz or an .npz.")


def _is_cifar_folder(path: Path) -> bool:
    return any((path / f).is_file() for files in _CIFAR_FILES.values() for f in files)
