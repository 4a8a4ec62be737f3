"""A sample directory: the files `sample-batch` writes and `report` reads, their names and columns, the reader that
checks the samples against run.json, and the rules that keep a user's files safe.

- `sample-batch` builds the whole directory beside `--out` and swaps it in (`replace_whole`), so a directory changes
  as a whole or not at all; it replaces only a directory that holds nothing charlm did not write.
- run.json says charlm made the directory (`"toolkit": "charlm"`) and what the samples are (the sampling config,
  the digest of reference.json.xz); `Samples` reads the samples in bounded chunks and refuses, in one line, rows
  that run.json does not describe (a truncated file, a missing temperature, rows out of order).
- The report's files are written only where they are charlm's own or new (`check_report_dir`).
- A shard (`Shard`, run.json's `shard`) holds one contiguous range of a run's rows; `runs` groups the directories
  `report` is given into the runs they make, the shards of one run checked to be one complete, disjoint split, and
  `JoinedSamples` reads them one after another as one samples file.

Needs numpy and pyarrow only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit import titles
from toolkit.files import (
    UsageError,
    clear_stale,
    exclusive,
    is_temporary,
    recover_siblings,
    replace_dir,
    staging_dir,
)

RUN_INFO = "run.json"
SAMPLES = {"csv": "samples.csv", "parquet": "samples.parquet"}
FORMATS = tuple(SAMPLES)
METRICS, USEFULNESS, REPORT = "metrics.csv", "usefulness.csv", "report.html"
REPORT_FILES = (METRICS, USEFULNESS, REPORT)
COLUMNS = ("sample_id", "temperature", "class", "prompt", "text", "length", "finished", "logprob", "seed")
CLASS = "class"  # the column only samples of a class-conditional model have
ANY = "any"  # the class name that asks a conditional model for no class
REQUIRED = ("temperature", "text", "finished")  # what a report needs of a samples file made elsewhere
TOOLKIT, LAYOUT = "charlm", 1  # run.json's marker: {"toolkit": "charlm", "layout": 1, ...}
MADE_HERE = (RUN_INFO, *SAMPLES.values(), titles.FILE, *REPORT_FILES)
GENERATOR = '<meta name="generator" content="charlm">'  # in every report.html: how a later report knows it
CHUNK_ROWS = 65_536  # rows a reader holds at once
FIX = "rerun `cli.py sample-batch`"


def columns(classes: bool) -> tuple[str, ...]:
    """The columns of a samples file: `class` only where the samples have classes."""
    return tuple(c for c in COLUMNS if c != CLASS or classes)


def row_groups(rows: np.ndarray, n: int, classes: int, prompts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's (temperature, class, prompt) index. Rows are temperature-major, then class (one group where the
    samples have none), then the group's `n` samples, the prompts cycling within a group."""
    group = rows // n
    return group // classes, group % classes, rows % n % prompts


def read_info(directory: Path) -> dict:
    """run.json, or {} when there is none."""
    path = Path(directory) / RUN_INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"cannot read {path} ({e}); {FIX}") from None
    if not isinstance(info, dict) or not isinstance(info.get("train_config", {}), dict) or not isinstance(
            info.get("sampling", {}), dict):
        raise UsageError(f"{path} is not a run.json from `cli.py sample-batch`; {FIX}")
    bpc = info.get("reference_bpc")
    if bpc is not None and (isinstance(bpc, bool) or not isinstance(bpc, int | float)):
        raise UsageError(f"{path}: reference_bpc {bpc!r} is not a number; {FIX}")
    return info


def sample_info(directory: Path) -> dict | None:
    """run.json of a directory it says charlm wrote (or, from before the marker, that holds a sampling config);
    None for any other directory, or a run.json that cannot be read."""
    try:
        info = read_info(directory)
    except UsageError:
        return None
    return info if info.get("toolkit") == TOOLKIT or ("sampling" in info and "provider" in info) else None


def is_sample_dir(directory: Path) -> bool:
    """A directory whose run.json says charlm wrote it (or, from before the marker, holds a sampling config)."""
    return sample_info(directory) is not None


def _ours(name: str) -> bool:
    return name in MADE_HERE or is_temporary(name) or fnmatch.fnmatchcase(name, ".*.tmp*")


def foreign(directory: Path) -> list[str]:
    """Entries charlm did not write: never replaced, never deleted."""
    return sorted(p.name + "/" * p.is_dir() for p in Path(directory).iterdir() if p.is_dir() or not _ours(p.name))


def check_out(out: Path) -> Path:
    """Refuse an output directory `sample-batch` must not replace (cheap: called before the model loads); returns
    it resolved. A new or empty directory, or one that holds charlm's samples and nothing else, is replaced."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise UsageError(f"{{out}} {out} is a broken symbolic link; remove it or choose another {{out}}", "out")
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{{out}} {out} is a file, not a directory; choose a directory", "out")
    if out.is_dir():
        try:
            entries = any(out.iterdir())
        except OSError as e:
            raise UsageError(f"cannot read {{out}} {out}: {e.strerror}; choose another {{out}}", "out") from None
        if entries and not is_sample_dir(out):
            raise UsageError(f"{{out}} {out} is not empty and holds no charlm samples (no run.json of sample-batch); "
                             "nothing there is replaced: choose an empty or new directory", "out")
        if entries and foreign(out):
            raise UsageError(f"{{out}} {out} holds files charlm did not write ({', '.join(foreign(out)[:3])}); move "
                             "them out or choose another {out}", "out")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{{out}} {out}: {ancestor} is a file, not a directory; choose another {{out}}", "out")
    if not os.access(ancestor if ancestor == out else out.parent if out.parent.exists() else ancestor,
                     os.W_OK | os.X_OK):
        raise UsageError(f"{{out}} {out} is not writable; choose a writable {{out}}", "out")
    return out


@contextlib.contextmanager
def replace_whole(out: Path) -> Iterator[Path]:
    """Yield a new directory to write the samples into; when the block ends, it replaces `out` whole (an earlier
    sample directory there goes with it), and when the block fails, `out` is as it was.

    `out` is held locked meanwhile (a second command writing it is refused), and what killed commands left beside
    it is cleared first.
    """
    out = check_out(out)
    created = not out.exists()
    recover_siblings(out, lambda d: is_sample_dir(d) or not foreign(d))
    with exclusive(out):
        clear_stale(out)
        new = staging_dir(out)
        try:
            yield new
            if not (is_sample_dir(out) or not any(out.iterdir())) or foreign(out):
                raise UsageError(f"{{out}} {out} changed while sampling (it now holds files charlm did not write); it "
                                 "was left as it is and the new samples discarded", "out")
            replace_dir(new, out)
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only if still empty
            raise


def _charlm_report(path: Path) -> bool:
    """A metrics.csv, usefulness.csv or report.html that charlm wrote."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    if path.name == REPORT:
        return GENERATOR in head
    if path.name == USEFULNESS:
        return bool(re.match(r"(run,)?section,class,temperature,figure", head))
    return bool(re.match(r"(run,)?(class,)?group,temperature,samples", head))


def check_report_dir(directory: Path) -> None:
    """Refuse to overwrite a report file (metrics.csv, usefulness.csv, report.html) in `directory` that charlm did not
    write."""
    directory = Path(directory)
    if is_sample_dir(directory):
        return
    mine = [name for name in REPORT_FILES if (directory / name).exists() and not _charlm_report(directory / name)]
    if mine:
        raise UsageError(f"{directory} holds a {mine[0]} that charlm did not write; move it out or choose another "
                         "directory")


def check_comparison_out(out: Path, compared: list[Path]) -> Path:
    """A comparison's directory: new, empty, or holding only an earlier comparison's files."""
    out = Path(out).resolve()
    if out in {Path(d).resolve() for d in compared}:
        raise UsageError(f"{{out}} {out} is one of the compared directories and would overwrite its report; choose "
                         "another directory", "out")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{{out}} {out} is a file, not a directory; choose a directory", "out")
    if out.is_dir() and any(out.iterdir()):
        if is_sample_dir(out):
            raise UsageError(f"{{out}} {out} holds samples, whose own report a comparison would replace; choose "
                             "another directory", "out")
        other = [p.name for p in out.iterdir() if p.name not in REPORT_FILES and not is_temporary(p.name)]
        if other:
            raise UsageError(f"{{out}} {out} holds files other than a comparison's ({', '.join(sorted(other)[:3])}); "
                             "choose an empty or new directory", "out")
        check_report_dir(out)
    return out


# --- reading ----------------------------------------------------------------------------------------------------------

def samples_path(directory: Path) -> Path:
    """samples.csv or samples.parquet: the one run.json names, else the newer of the two present."""
    directory = Path(directory)
    info = read_info(directory)
    fmt = info.get("format") if isinstance(info.get("format"), str) else None
    found = [directory / name for f, name in SAMPLES.items() if (directory / name).is_file() and fmt in (None, f)]
    if not found:
        raise UsageError(f"no samples.csv or samples.parquet in {directory}; run `cli.py sample-batch --out "
                         f"{directory}` first")
    return max(found, key=lambda p: p.stat().st_mtime)


MAX_SHARDS = 1_000_000


@dataclass(frozen=True)
class Shard:
    """The `index`-th (from 1) of `count` contiguous ranges of a run's rows, numbered as `split -n l/K/N` numbers its
    parts: range K of N holds rows [(K - 1) * rows // N, K * rows // N), so the sizes differ by one row at most and
    the ranges of 1/N to N/N, one after another, are the whole run. Every row's text depends only on (seed, row), so
    a shard's rows are the whole run's, whoever samples them."""

    index: int
    count: int

    def __post_init__(self) -> None:
        for value in (self.index, self.count):
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{{shard}} must be I/N with whole numbers, not {self.index!r}/{self.count!r}",
                                 "shard")
        if not 1 <= self.index <= self.count <= MAX_SHARDS:
            raise UsageError(f"{{shard}} {self.index}/{self.count} must be I/N with 1 <= I <= N <= {MAX_SHARDS:,}; "
                             "e.g. {shard} 1/4 to {shard} 4/4", "shard")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'2/4' -> Shard(2, 4)."""
        index, slash, count = text.strip().partition("/")
        if not slash or not index.strip().isdigit() or not count.strip().isdigit():
            raise UsageError(f"{{shard}} {text!r} is not I/N (the I-th of N parts of the run, from 1); e.g. "
                             "{shard} 1/4", "shard")
        return cls(int(index), int(count))

    def rows(self, total: int) -> tuple[int, int]:
        """[first, stop) of this shard among a run's `total` rows."""
        return (self.index - 1) * total // self.count, self.index * total // self.count

    def check(self, total: int) -> None:
        """Refuse more shards than the run has rows (some would hold none)."""
        if self.count > total:
            raise UsageError(f"{{shard}} {self}: the run has {total:,} rows, too few for {self.count:,} shards; use "
                             f"at most {total:,}", "shard")

    def to_dict(self, total: int) -> dict:
        """run.json's `shard`."""
        first, stop = self.rows(total)
        return {"index": self.index, "count": self.count, "first": first, "stop": stop}

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class Expected:
    """What run.json says the samples are: rows in order of sample_id, as `row_groups` lays them out; a shard's
    samples are rows [first, stop) of them."""

    temperatures: tuple[float, ...]
    n: int
    prompts: tuple[str, ...]
    seed: int | None
    classes: tuple[str, ...] = ()
    first: int = 0
    stop: int | None = None  # None: to the end of the run

    @property
    def total(self) -> int:
        """The whole run's rows."""
        return self.n * len(self.temperatures) * max(1, len(self.classes))

    @property
    def rows(self) -> int:
        """The rows of this file."""
        return (self.total if self.stop is None else self.stop) - self.first

    def groups(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return row_groups(rows, self.n, max(1, len(self.classes)), len(self.prompts))

    @classmethod
    def from_info(cls, info: dict) -> Expected | None:
        sampling = info.get("sampling", {})
        temps, n = sampling.get("temperatures"), sampling.get("n")
        if not (isinstance(temps, list) and temps and all(isinstance(t, int | float) for t in temps)
                and isinstance(n, int) and n > 0):
            return None  # a run.json from elsewhere: nothing to check against
        prompts = sampling.get("prompts") or [""]
        seed = sampling.get("seed")
        classes = sampling.get("classes") or []
        expected = cls(tuple(float(t) for t in temps), n, tuple(map(str, prompts)),
                       seed if isinstance(seed, int) else None, tuple(map(str, classes)) if isinstance(classes, list)
                       else ())
        shard = shard_of(info)
        if shard is None:
            return expected
        first, stop = shard.rows(expected.total)
        return dataclasses.replace(expected, first=first, stop=stop)


def _arrow_error(path: Path, names: list[str], e: Exception) -> UsageError:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if text == "Empty CSV file":
        return UsageError(f"{path} is empty; {FIX}")
    # pyarrow names the row too ("Row #2: ") where its reader runs on one thread (OMP_NUM_THREADS=1, say)
    column = re.match(r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to (\w+): (.*)", text)
    if column and int(column[1]) < len(names):
        row = f" (row {int(column[2]):,})" if column[2] else ""
        text = f"column {names[int(column[1])]} must hold {column[3]} values{row}: {column[4]}"
    return UsageError(f"cannot read {path}: {text}; fix the file or {FIX}")


class Samples:
    """A samples file read in chunks of at most CHUNK_ROWS rows, never whole, each checked against run.json.

    `chunks(columns)` yields pyarrow RecordBatches of the columns asked for (those the file has), with temperature
    and logprob as float64 and finished as bool; after the last chunk, the rows seen are checked against what
    run.json says there should be.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.info = read_info(self.directory)
        self.path = samples_path(self.directory)
        self.expected = Expected.from_info(self.info)
        self.names = self._names()
        missing = [c for c in REQUIRED if c not in self.names]
        if missing:
            raise UsageError(f"{self.path} lacks the column(s) {', '.join(missing)}; pass samples written by "
                             "`cli.py sample-batch`")

    def _names(self) -> list[str]:
        try:
            if self.path.suffix == ".csv":
                import pyarrow as pa
                import pyarrow.csv

                with pyarrow.csv.open_csv(self.path, read_options=pyarrow.csv.ReadOptions(block_size=1 << 16),
                                          convert_options=pyarrow.csv.ConvertOptions(
                                              column_types=dict.fromkeys(COLUMNS, pa.string()))) as reader:
                    return reader.schema.names
            import pyarrow.parquet

            return pyarrow.parquet.ParquetFile(self.path).schema_arrow.names
        except UsageError:
            raise
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise _arrow_error(self.path, [], e) from None

    @staticmethod
    def _convert(columns: list[str] | None):
        import pyarrow as pa
        import pyarrow.csv

        types = {"sample_id": pa.int64(), "temperature": pa.float64(), CLASS: pa.string(), "prompt": pa.string(),
                 "text": pa.string(),
                 "length": pa.int64(), "finished": pa.bool_(), "logprob": pa.float64(), "seed": pa.uint64()}
        return pyarrow.csv.ConvertOptions(column_types=types, include_columns=columns, strings_can_be_null=False,
                                          quoted_strings_can_be_null=False)

    def chunks(self, columns: tuple[str, ...] = COLUMNS) -> Iterator:
        wanted = [c for c in dict.fromkeys((*columns, *(("sample_id", "temperature", CLASS, "prompt", "seed")
                                                         if self.expected else ()))) if c in self.names]
        seen = 0
        for batch in self._read(wanted):
            if batch.num_rows:
                batch = self._normal(batch)
                self._check(batch, seen)
                seen += batch.num_rows
                yield batch
        if not seen:
            raise UsageError(f"{self.path} holds no samples; rerun `cli.py sample-batch` with --n 1 or more")
        expected = self.expected
        if expected and seen != expected.rows:
            whole = (f"{len(expected.temperatures)} temperature(s)"
                     f"{f' × {len(expected.classes)} classes' if expected.classes else ''} of {expected.n:,}")
            raise self._mismatch(f"holds {seen:,} rows where run.json describes {expected.rows:,} ("
                                 + (f"shard {shard_of(self.info)} of {whole}" if expected.stop is not None else whole)
                                 + ")")

    def _read(self, columns: list[str]) -> Iterator:
        try:
            if self.path.suffix == ".csv":
                import pyarrow.csv

                options = pyarrow.csv.ReadOptions(block_size=4 << 20)
                with pyarrow.csv.open_csv(self.path, read_options=options,
                                          convert_options=self._convert(columns)) as reader:
                    for batch in reader:
                        yield from _split(batch)
            else:
                import pyarrow.parquet

                yield from pyarrow.parquet.ParquetFile(self.path).iter_batches(CHUNK_ROWS, columns=columns)
        except UsageError:
            raise
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise _arrow_error(self.path, self.names, e) from None

    def _normal(self, batch):
        """Temperature and logprob as float64, finished as bool, whatever type a Parquet file gave them."""
        import pyarrow as pa

        columns = {}
        for name, kind in (("temperature", pa.float64()), ("logprob", pa.float64()), ("finished", pa.bool_()),
                           ("text", pa.string())):
            if name in batch.schema.names:
                column = batch.column(name)
                if column.null_count and name != "text":
                    raise UsageError(f"{self.path}: column {name} has empty values; fix the file or {FIX}")
                try:
                    if name == "finished" and not pa.types.is_boolean(column.type):
                        raise TypeError(column.type)
                    columns[name] = column.cast(kind) if column.type != kind else column
                except (TypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise UsageError(f"{self.path}: column {name} must hold "
                                     f"{'true or false' if name == 'finished' else 'numbers'}, not {column.type}; "
                                     f"{FIX}") from None
                if name == "temperature" and not np.isfinite(columns[name].to_numpy()).all():
                    raise UsageError(f"{self.path}: column temperature holds a value that is not a finite number; "
                                     f"{FIX}")
        if "text" in columns:
            columns["text"] = columns["text"].fill_null("")
        return pa.RecordBatch.from_arrays([columns.get(n, batch.column(n)) for n in batch.schema.names],
                                          names=batch.schema.names)

    def _check(self, batch, first: int) -> None:
        """The chunk's rows are rows first, first + 1, ... of the run run.json describes."""
        expected = self.expected
        if expected is None:
            return
        rows = expected.first + first + np.arange(batch.num_rows)
        names = batch.schema.names
        if "sample_id" in names and not np.array_equal(batch.column("sample_id").to_numpy(), rows):
            at = int(np.flatnonzero(batch.column("sample_id").to_numpy() != rows)[0])
            raise self._mismatch(f"row {first + at:,} has sample_id {batch.column('sample_id')[at].as_py()} where "
                                 f"{rows[at]:,} belongs: rows are missing, repeated or out of order")
        if rows[-1] >= expected.first + expected.rows:
            raise self._mismatch(f"holds more than the {expected.rows:,} rows run.json describes")
        temperature, label, prompt = expected.groups(rows)
        temps = np.asarray(expected.temperatures)[temperature]
        found = batch.column("temperature").to_numpy()
        if not np.allclose(found, temps, rtol=1e-9, atol=0):
            at = int(np.flatnonzero(~np.isclose(found, temps, rtol=1e-9, atol=0))[0])
            raise self._mismatch(f"row {first + at:,} has temperature {found[at]:g} where run.json has "
                                 f"{temps[at]:g}")
        if expected.classes and CLASS not in names:
            raise self._mismatch(f"has no {CLASS} column where run.json names classes")
        for column, values, index in (("prompt", expected.prompts, prompt), (CLASS, expected.classes, label)):
            if column in names and values:
                import pyarrow as pa
                import pyarrow.compute as pc

                want = pa.array(values).take(pa.array(index))
                same = pc.equal(batch.column(column), want).to_numpy(zero_copy_only=False)
                if not same.all():
                    at = int(np.flatnonzero(~same)[0])
                    raise self._mismatch(f"row {first + at:,} has a {column} that run.json does not give it")
        if "seed" in names and expected.seed is not None:
            seeds = batch.column("seed").to_numpy()
            if (seeds != np.uint64(expected.seed)).any():
                raise self._mismatch(f"its seed column differs from run.json's seed {expected.seed}")

    def _mismatch(self, what: str) -> UsageError:
        return UsageError(f"{self.path} {what}: it does not match {RUN_INFO} (truncated, edited or from another "
                          f"run); {FIX}")


def shard_of(info: dict, where: str = RUN_INFO) -> Shard | None:
    """run.json's `shard`: None for a whole run; a damaged entry is refused."""
    entry = info.get("shard")
    if entry is None:
        return None
    try:
        return Shard(entry["index"], entry["count"])
    except (TypeError, KeyError, UsageError):
        raise UsageError(f"{where}: its shard {entry!r} is not {{index: I, count: N}}; {FIX}") from None


RUN_KEYS = ("sampling", "train_config", "data_fingerprint", "precision", "titles")  # what makes two shards one run


def _run_key(info: dict) -> str:
    return json.dumps({k: info.get(k) for k in RUN_KEYS}, sort_keys=True)


def _directory(given: Path) -> Path:
    """`given` as a Path, refused in one line unless it is a directory."""
    given = Path(given)
    if not given.is_dir():
        raise UsageError(f"{given} is not a directory of samples; run `cli.py sample-batch --out {given}` first")
    return given


@dataclass(frozen=True)
class Run:
    """What `report` scores as one run: one sample directory, or the directories of every shard of one run, in
    shard order (`home`: where its report goes: the sample directory, or the directory holding the shards)."""

    parts: tuple[Path, ...]
    home: Path

    @classmethod
    def of(cls, given: Path | Run) -> Run:
        """A Run as given, or the one sample directory `given` (refused in one line if it is not a directory)."""
        if isinstance(given, Run):
            return given
        given = _directory(given)
        return cls((given,), given)

    @property
    def sharded(self) -> bool:
        return len(self.parts) > 1 or shard_of(read_info(self.parts[0])) is not None

    def samples(self) -> Samples | JoinedSamples:
        return JoinedSamples(self.parts) if self.sharded else Samples(self.parts[0])


class JoinedSamples:
    """The shards of one run read as one samples file: each shard's rows, checked against its own run.json, one
    shard after another (so rows stay in order of sample_id). `info` is the whole run's run.json (no `shard`)."""

    def __init__(self, parts: tuple[Path, ...]):
        self.shards = [Samples(p) for p in parts]
        first = self.shards[0]
        self.info = {k: v for k, v in first.info.items() if k != "shard"}
        self.path, self.directory = first.path, first.directory
        self.names = [n for n in first.names if all(n in s.names for s in self.shards)]

    def chunks(self, columns: tuple[str, ...] = COLUMNS) -> Iterator:
        for shard in self.shards:
            for batch in shard.chunks(columns):
                yield batch.select([n for n in batch.schema.names if n in self.names])


def runs(paths: list[Path]) -> list[Run]:
    """The runs `report` is given: each path a sample directory (a whole run, or a shard), or a directory whose
    subdirectories are the shards of one run. Shards given one by one are grouped by the run their run.json
    describes (same sampling, model and titles); each run's shards must be one split of it, complete and each given
    once, or it is refused in one line naming the shard that is missing or repeated."""
    whole: list[tuple[int, Run]] = []
    loose: dict[str, list[tuple[int, Path, Shard]]] = {}
    for order, path in enumerate(map(_directory, paths)):
        info = sample_info(path)
        if info is not None:
            shard = shard_of(info, str(path / RUN_INFO))
            if shard is None:
                whole.append((order, Run((path,), path)))
            else:
                loose.setdefault(_run_key(info), []).append((order, path, shard))
            continue
        inside = [(p, sample_info(p)) for p in sorted(path.iterdir()) if p.is_dir()]
        shards = [(p, shard_of(i, str(p / RUN_INFO)), _run_key(i)) for p, i in inside if i is not None]
        shards = [(p, s, key) for p, s, key in shards if s is not None]
        if not shards:
            raise UsageError(f"{path} holds no samples (no run.json of sample-batch, nor shard directories in it); "
                             f"run `cli.py sample-batch --out {path}` first")
        keys = {key for _, _, key in shards}
        if len(keys) > 1:
            raise UsageError(f"{path} holds shards of {len(keys)} different runs (their run.json differ in sampling, "
                             "model or titles); keep the shards of one run in a directory")
        whole.append((order, Run(_ordered([(order, p, s) for p, s, _ in shards], str(path)), path)))
    for group in loose.values():
        parts = _ordered(group, ", ".join(str(p) for _, p, _ in group))
        home = Path(os.path.commonpath([p.resolve().parent for p in parts]))
        whole.append((min(o for o, _, _ in group), Run(parts, home)))
    return [run for _, run in sorted(whole, key=lambda item: item[0])]


def _ordered(group: list[tuple[int, Path, Shard]], where: str) -> tuple[Path, ...]:
    """The shard directories of one run in shard order, once each shard of one split is there exactly once."""
    counts = sorted({s.count for _, _, s in group})
    if len(counts) > 1:
        raise UsageError(f"the shards in {where} split one run in {counts[0]} and in {counts[1]} parts; pass the "
                         "shards of one split")
    count, at = counts[0], {}
    for _, path, shard in group:
        if shard.index in at:
            raise UsageError(f"shard {shard} is given twice ({at[shard.index]} and {path}); pass each shard once")
        at[shard.index] = path
    missing = [i for i in range(1, count + 1) if i not in at]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"shard {missing[0]}/{count}{more} of the run in {where} is missing; sample it with "
                         f"`cli.py sample-batch` and the same options plus --shard {missing[0]}/{count}, or pass "
                         "its directory")
    return tuple(at[i] for i in range(1, count + 1))


def _split(batch) -> Iterator:
    for start in range(0, batch.num_rows, CHUNK_ROWS):
        yield batch.slice(start, CHUNK_ROWS)


def read_titles(directory: Path, info: dict) -> titles.Titles | None:
    """reference.json.xz beside the samples, checked against the digest run.json keeps of it; None when there is
    none."""
    path = Path(directory) / titles.FILE
    if not path.is_file():
        return None
    fix = "rerun `cli.py sample-batch`, or pass --train-data"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror}); {fix}") from None
    recorded = info.get("titles") if isinstance(info.get("titles"), dict) else {}
    if recorded.get("digest") not in (None, titles.digest(data)):
        raise UsageError(f"{path} is not the file the samples were made with (its digest differs from run.json's); "
                         f"{fix}")
    found = titles.parse(data, f"{path} is", fix)
    if not found.val:
        raise UsageError(f"{path} holds no val_titles, so there is no reference to compare with; rerun "
                         "`cli.py sample-batch` on a model trained with held-out titles")
    return found
