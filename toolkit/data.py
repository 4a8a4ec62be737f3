"""Data sources (the bundled AG News test split, TFDS, AG News CSV, one title per line) and the validation split.

Nothing here imports TensorFlow at module level: sampling and reports read training titles too.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import lzma
import socket
import sys
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

from toolkit.files import UsageError
from toolkit.vocab import BREAK

FIELDS = ("title", "description", "both")
TFDS_SCHEME = "tfds:"
BUNDLED = {"ag_news:test": "ag_news_test.csv.xz"}  # named source -> file in toolkit/corpora/ (see its README)
OPENERS = {".gz": gzip.open, ".xz": lzma.open}  # compressed files are decompressed while they are read
DAMAGED = (EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile)  # a truncated or corrupt compressed file


AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")  # the CSV's class ids 1-4, TFDS's labels 0-3
MAX_CLASSES = 64  # more distinct labels than this are not classes (ids, free text): they are left out


@dataclass(frozen=True)
class Row:
    title: str
    description: str = ""
    label: str | None = None  # the row's class (AG News: World, Sports, Business, Sci/Tech); None: unlabelled


@dataclass(frozen=True)
class Corpus:
    """Texts to train on, and the texts whose bits per character tell how well the model generalises; with their
    classes, where the source has labels (each text's index into `classes`)."""

    train: list[str]
    val: list[str]
    train_titles: list[str]  # what novelty is measured against, whatever the model trained on
    val_titles: list[str]  # the held-out titles (the report's reference row), whatever the model validates on
    classes: tuple[str, ...] = ()  # () where the source has no labels
    train_labels: list[int] | None = None  # per text of `train`
    val_labels: list[int] | None = None  # per text of `val`
    train_title_labels: list[int] | None = None  # per title of `train_titles`
    val_title_labels: list[int] | None = None  # per title of `val_titles`


def check_source(source: str) -> None:
    """Refuse a source that cannot be read, without reading it: a named source, or an existing .csv or .txt file
    (compressed or not). A `tfds:` name is checked when TFDS loads it."""
    if source.startswith(TFDS_SCHEME) or source in BUNDLED:
        return
    scheme, colon, _ = source.partition(":")
    if colon and len(scheme) > 1 and not Path(source).exists():  # one letter is a Windows drive
        raise UsageError(f"unknown data source {source!r}: use {' or '.join(BUNDLED)} (bundled), "
                         "tfds:ag_news_subset (downloads), a .csv in the AG News format, or a .txt file with one "
                         "title per line (either may end in .gz or .xz)")
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"data file {source} does not exist; pass an existing .csv or .txt file (or "
                         f"{' or '.join(BUNDLED)})")
    if _kind(path) not in (".csv", ".txt"):
        raise UsageError(f"data file {source} is neither .csv (AG News format) nor .txt (one title per line), "
                         "nor either compressed as .gz or .xz")


def _kind(path: Path) -> str:
    """.csv or .txt, under any compression suffix."""
    return (path.with_suffix("").suffix if path.suffix.lower() in OPENERS else path.suffix).lower()


def read_rows(source: str) -> tuple[list[Row], list[Row] | None]:
    """Read a data source; returns (rows, validation rows when the source has its own split)."""
    check_source(source)
    if source.startswith(TFDS_SCHEME):
        return _read_tfds(source.removeprefix(TFDS_SCHEME))
    if source in BUNDLED:
        with resources.as_file(resources.files("toolkit") / "corpora" / BUNDLED[source]) as path:
            return read_csv(path), None
    path = Path(source)
    return (read_csv(path) if _kind(path) == ".csv" else read_txt(path)), None


def open_text(path: Path, newline: str | None = None) -> TextIO:
    """Open a UTF-8 text file for reading as a stream; a .gz or .xz file is decompressed on the way. A byte-order
    mark (spreadsheet programs on Windows write one) is not part of the text."""
    return OPENERS.get(path.suffix.lower(), open)(path, "rt", encoding="utf-8-sig", newline=newline)


def read_csv(path: Path) -> list[Row]:
    """The ag_news_csv format: headerless `"class","title","description"`; a header line is skipped. Class ids 1-4
    (AG News) read as AG_NEWS_CLASSES; any other class column is read as it is."""
    csv.field_size_limit(sys.maxsize)
    rows = []
    try:
        with open_text(path, newline="") as f:
            reader = csv.reader(f)
            for record in reader:
                if len(record) != 3:
                    if not record:
                        continue
                    raise UsageError(f"{path}, line {reader.line_num}: expected 3 columns "
                                     f"(class, title, description), found {len(record)}; fix or remove that line")
                label, title, description = record
                if reader.line_num == 1 and _header(label, title):
                    continue  # a header such as "Class Index,Title,Description"
                rows.append(Row(title, description, label.strip()))
    except (OSError, UnicodeDecodeError, csv.Error, *DAMAGED) as e:
        raise _unreadable(path, e, "a UTF-8 CSV in the AG News format") from None
    ids = {str(i + 1): name for i, name in enumerate(AG_NEWS_CLASSES)}
    if rows and all(r.label in ids for r in rows):
        rows = [Row(r.title, r.description, ids[r.label]) for r in rows]
    return rows


def _header(label: str, title: str) -> bool:
    """A first line naming its columns (class labels may be words, so a non-number alone does not make one)."""
    return title.strip().lower() in ("title", "headline") or label.strip().lower() in (
        "class", "class index", "label", "category")


def read_txt(path: Path) -> list[Row]:
    """One title per line; blank lines are skipped."""
    try:
        with open_text(path) as f:
            return [Row(line.removesuffix("\n")) for line in f if line.strip()]
    except (OSError, UnicodeDecodeError, *DAMAGED) as e:
        raise _unreadable(path, e, "a UTF-8 text file with one title per line") from None


def _unreadable(path: Path, e: Exception, wanted: str) -> UsageError:
    """One line for a file that cannot be read, saying when a compressed file is the problem."""
    reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, DAMAGED):
        reason += f" (not complete, valid {path.suffix.lower()} data: truncated, damaged or misnamed)"
    return UsageError(f"cannot read {path}: {reason}; pass {wanted}")


def _read_tfds(name: str) -> tuple[list[Row], list[Row]]:
    """A TFDS dataset with `title` and `description` features; its `test` split is the validation set."""
    import tensorflow_datasets as tfds

    try:
        try:
            splits = tfds.load(name, split=["train", "test"], batch_size=65536, download=False)
        except AssertionError:  # TFDS's word for "not prepared in the data dir": a download is needed
            _check_online(name)
            splits = tfds.load(name, split=["train", "test"], batch_size=65536)
    except UsageError:
        raise
    except Exception as e:  # TFDS raises many types: unknown name, no network, bad data_dir
        raise UsageError(f"cannot load tfds:{name}: {str(e).splitlines()[0]}; check the name, the network "
                         "or TFDS_DATA_DIR, or pass a local .csv/.txt file") from None
    names = tfds_label_names(name)
    out = []
    for split in splits:
        rows = []
        for batch in tfds.as_numpy(split):
            titles, descriptions = batch["title"], batch.get("description", [b""] * len(batch["title"]))
            labels = [names[i] if names else str(i) for i in batch["label"]] if "label" in batch else [None] * len(
                titles)
            rows += [Row(t.decode("utf-8"), d.decode("utf-8"), c) for t, d, c in zip(titles, descriptions, labels,
                                                                                      strict=True)]
        out.append(rows)
    return out[0], out[1]


def tfds_label_names(name: str) -> list[str] | None:
    """The names TFDS gives a dataset's label ids (ag_news_subset: AG_NEWS_CLASSES), read offline from its builder."""
    import tensorflow_datasets as tfds

    try:
        return list(tfds.builder(name).info.features["label"].names)
    except Exception:  # no builder, no label feature, or not a ClassLabel
        return None


def _check_online(name: str) -> None:
    """TFDS retries an unreachable download for minutes; without a network, say so within seconds."""
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=5).close()
    except OSError as e:
        raise UsageError(f"cannot download tfds:{name}: no network ({e}); connect, point TFDS_DATA_DIR at a "
                         "prepared copy, or pass a local .csv/.txt file") from None


def _classes(rows: list[Row]) -> tuple[str, ...]:
    """The training rows' classes: AG News' in their order, others sorted; none where a row is unlabelled or where
    there are more than MAX_CLASSES."""
    if not rows or any(r.label is None for r in rows):
        return ()
    found = {r.label for r in rows}
    if found <= set(AG_NEWS_CLASSES):
        return tuple(c for c in AG_NEWS_CLASSES if c in found)
    return tuple(sorted(found)) if len(found) <= MAX_CLASSES else ()


def in_validation(title: str, fraction: float) -> bool:
    """A stable hash of the title decides, so the split is the same on every machine and every run."""
    digest = hashlib.blake2b(title.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def labels_of(rows: list[Row], field: str) -> list[str | None]:
    """Each text's label, for the texts `texts_of` gives (a description continues its title's class)."""
    if field == "title":
        return [r.label for r in rows]
    if field == "description":
        return [r.label for r in rows if r.description]
    return [r.label for r in rows for t in (r.title, r.description) if t]


def texts_of(rows: list[Row], field: str) -> list[str]:
    """The texts a field selects.

    `both` gives each title, and each description led by BREAK, which trains as `<eos> description <eos>`:
    a description is what follows a finished title, and every <bos> is followed by a title, as in generation.
    """
    if field == "title":
        return [r.title for r in rows]
    if field == "description":
        return [r.description for r in rows if r.description]
    return [t for r in rows for t in (r.title, BREAK + r.description if r.description else "") if t]


def load_corpus(source: str, field: str = "title", val_fraction: float = 0.1,
                val_source: str | None = None) -> Corpus:
    """Training and validation texts from a source, with the split rules of the README."""
    rows, val_rows = read_rows(source)
    if val_source is not None:
        val_rows, _ = read_rows(val_source)
    elif val_rows is None:
        held = [in_validation(r.title, val_fraction) for r in rows]
        val_rows = [r for r, h in zip(rows, held, strict=True) if h]
        rows = [r for r, h in zip(rows, held, strict=True) if not h]
    val_field = "description" if field == "description" else "title"
    classes = _classes(rows)
    number = {c: i for i, c in enumerate(classes)}

    def labelled(labels: list[str | None]) -> list[int] | None:
        if not classes:
            return None
        return [number.get(label, -1) for label in labels]  # -1: a validation label training never saw

    corpus = Corpus(texts_of(rows, field), texts_of(val_rows, val_field), [r.title for r in rows],
                    [r.title for r in val_rows], classes, labelled(labels_of(rows, field)),
                    labelled(labels_of(val_rows, val_field)), labelled([r.label for r in rows]),
                    labelled([r.label for r in val_rows]))
    if not corpus.train:
        raise UsageError(f"no training texts in {source} (field {field}); pass a non-empty data source")
    if not corpus.val:
        raise UsageError(f"no validation texts from {val_source or source}; raise {{val_fraction}} or pass "
                         "{val_data}", "val_fraction", "val_data")
    return corpus
