"""Class predictions for image files: given one by one, in folders, or in zips of any size.

Images are fitted to the model's input size by the rule it was trained with (`--resize`), read
and predicted a batch at a time, so memory does not grow with the number of files. A file that
cannot be read or decoded becomes a `Prediction` with an `error`, and the rest go on.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from budgetnet.data.sources import Resize, decode_image
from budgetnet.deploy import Deployed
from budgetnet.errors import BudgetnetError
from budgetnet.evaluate import predict_logits

Reader = Callable[[], bytes]


@dataclass(frozen=True)
class Prediction:
    """The top classes of one file, most probable first, or why it has none (`error`)."""

    file: str
    labels: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "labels": self.labels, "probabilities": [round(p, 6) for p in self.probabilities]}


def _hidden(relative: str) -> bool:
    # Dot-files and macOS resource forks are file-system bookkeeping, not the user's images.
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.split("/"))


def _file_reader(path: Path) -> Reader:
    def read() -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise BudgetnetError(f"cannot read {path} ({exc.strerror or exc})") from None
    return read


def _zip_entries(path: Path) -> Iterator[tuple[str, Reader]]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        message = f"cannot open zip {path} ({exc})"

        def broken() -> bytes:
            raise BudgetnetError(message)
        yield str(path), broken
        return
    with archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            if info.is_dir() or _hidden(info.filename):
                continue

            def read(info: zipfile.ZipInfo = info) -> bytes:
                try:
                    return archive.read(info)
                except (OSError, zipfile.BadZipFile, EOFError) as exc:
                    raise BudgetnetError(f"cannot read {info.filename} from {path} ({exc})") from None
            yield f"{path}:{info.filename}", read


def image_files(paths: Sequence[Path]) -> Iterator[tuple[str, Reader]]:
    """(name, read) for every file under `paths`: files as given, folders walked in sorted
    order, .zip files member by member (named `archive.zip:member`). A path that does not
    exist yields a reader that fails, so it is reported like an unreadable file."""
    for path in map(Path, paths):
        if path.is_dir():
            for top, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    file = Path(top, name)
                    if not _hidden(file.relative_to(path).as_posix()):
                        yield str(file), _file_reader(file)
        elif path.suffix.lower() == ".zip" and path.is_file():
            yield from _zip_entries(path)
        else:
            yield str(path), _file_reader(path)


def predict_images(model: Deployed, paths: Sequence[Path], *, top_k: int = 3, tta: bool = False,
                   resize: Resize | None = None, batch_size: int = 64) -> Iterator[Prediction]:
    """Predictions for every file under `paths` (see `image_files`), `top_k` classes each;
    `resize` overrides the rule the model was trained with."""
    rule = resize or model.resize
    k = min(top_k, len(model.classes))
    batch: list[tuple[str, np.ndarray]] = []
    for name, read in image_files(paths):
        try:
            batch.append((name, decode_image(read(), name, model.input_size, rule)))
        except BudgetnetError as exc:
            yield Prediction(name, error=str(exc))
            continue
        if len(batch) == batch_size:
            yield from _predict_batch(model, batch, k, tta)
            batch = []
    if batch:
        yield from _predict_batch(model, batch, k, tta)


@torch.no_grad()
def _predict_batch(model: Deployed, batch: list[tuple[str, np.ndarray]], k: int, tta: bool) -> Iterator[Prediction]:
    pixels = torch.from_numpy(np.stack([image for _, image in batch])).permute(0, 3, 1, 2).float() / 255
    probabilities, indices = predict_logits(model.module, pixels, tta).float().softmax(1).topk(k, dim=1)
    for (name, _), p, i in zip(batch, probabilities.tolist(), indices.tolist()):
        yield Prediction(name, [model.classes[c] for c in i], p)
