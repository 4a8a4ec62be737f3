"""reference.json.xz: a run's training titles (what novelty is measured against) and its held-out titles (the
report's reference row), with each title's class where the data has labels. `train` writes it into the run,
`export-onnx` embeds its bytes in the model, `sample-batch` copies them beside the samples and `report` reads them:
this module is the one writer and the one reader."""

from __future__ import annotations

import hashlib
import json
import lzma
from dataclasses import dataclass
from pathlib import Path

from toolkit.files import UsageError, write_bytes

FILE = "reference.json.xz"
KEYS = ("train_titles", "val_titles")
LABELS = ("classes", "train_labels", "val_labels")  # present where the titles have classes


@dataclass(frozen=True)
class Titles:
    train: list[str]  # the training titles
    val: list[str]  # the held-out titles
    classes: tuple[str, ...] = ()  # the class names; () without labels
    train_labels: list[int] | None = None  # each training title's index into classes
    val_labels: list[int] | None = None  # each held-out title's (-1: a class training never saw)

    def to_bytes(self) -> bytes:
        data = {KEYS[0]: self.train, KEYS[1]: self.val}
        if self.classes:
            data |= {LABELS[0]: list(self.classes), LABELS[1]: self.train_labels, LABELS[2]: self.val_labels}
        return lzma.compress(json.dumps(data, ensure_ascii=False).encode("utf-8"))


def digest(data: bytes) -> str:
    """What run.json records of the file, so a reader can tell it is the one the samples were made with."""
    return hashlib.sha256(data).hexdigest()[:16]


def write(path: Path, titles: Titles) -> bytes:
    """Write the file atomically; returns its bytes."""
    data = titles.to_bytes()
    write_bytes(path, data)
    return data


def parse(data: bytes, where: str, fix: str) -> Titles:
    """The titles in the file's bytes; anything damaged is a usage error that starts with `where` ("X is" or
    "X are") and ends saying `fix`."""
    try:
        found = json.loads(lzma.decompress(data).decode("utf-8"))
    except (lzma.LZMAError, EOFError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{where} damaged ({e}); {fix}") from None
    missing = [k for k in KEYS if not (isinstance(found, dict) and isinstance(found.get(k), list)
                                       and all(isinstance(t, str) for t in found[k]))]
    if missing:
        raise UsageError(f"{where} damaged (no list of strings {' or '.join(missing)}: not a reference file); {fix}")
    if LABELS[0] not in found:
        return Titles(found[KEYS[0]], found[KEYS[1]])
    classes, train, val = (found.get(k) for k in LABELS)
    n = len(classes) if isinstance(classes, list) else 0
    if not (n and all(isinstance(c, str) for c in classes) and all(
            isinstance(labels, list) and len(labels) == len(found[key]) and all(
                isinstance(i, int) and -1 <= i < n for i in labels) for labels, key in ((train, KEYS[0]),
                                                                                        (val, KEYS[1])))):
        raise UsageError(f"{where} damaged (its classes and labels do not match its titles); {fix}")
    return Titles(found[KEYS[0]], found[KEYS[1]], tuple(classes), train, val)


def read(path: Path, fix: str) -> Titles:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror}); {fix}") from None
    return parse(data, f"{path} is", fix)
