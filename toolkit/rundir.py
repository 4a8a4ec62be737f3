"""A run directory: the marker that says charlm made it, the checks before anything is written, the swap
that puts a new run in place, and the journal that commits an epoch's files together.

No TensorFlow here: the CLI runs these checks before it loads any.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

from toolkit import titles
from toolkit.files import UsageError, clear_stale, lock, replace_dir, staging_dir, unlock, write_text
from toolkit.files import recover_siblings as _recover
from toolkit.sampling import contract

MARKER = "charlm-run.json"  # written first into every run: what may be replaced or resumed
FORMAT = 1
JOURNAL = ".commit.json"  # final name -> pending name of the files of one epoch, while they are renamed
PENDING = ".pending."  # prefix of an epoch's files before the journal commits them
CONFIG, VOCAB, HISTORY = "config.json", "vocab.json", "history.csv"
CHECKPOINTS = {"best": "best.keras", "last": "last.keras"}
MODEL, MODEL_FP16 = "model.onnx", "model.fp16.onnx"  # export-onnx's default outputs
VERIFY_SUFFIX = ".verify.json"  # beside each exported model: what its check against Keras found
# What charlm writes into a run: `train`'s files, `export-onnx`'s outputs, and temporaries of killed writes.
MADE_HERE = (MARKER, JOURNAL, CONFIG, VOCAB, HISTORY, *CHECKPOINTS.values(), titles.FILE, "*.onnx",
             f"*{VERIFY_SUFFIX}", f"{PENDING}*", ".*.tmp*")
# Left only by a killed `train`, whatever its process: pending epoch files and the temporaries of what train
# writes (another command's temporaries, such as a running export's, are removed only once its process is dead).
STRAYS = (f"{PENDING}*", *(f".{Path(name).stem}.*.tmp{Path(name).suffix}" for name in (
    MARKER, JOURNAL, CONFIG, VOCAB, titles.FILE)))


def _marker(path: Path) -> dict:
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("toolkit") == "charlm" else {}


def is_run(path: Path) -> bool:
    """A directory that carries charlm's marker."""
    return bool(_marker(path))


def _foreign(run: Path) -> list[str]:
    """Entries of a run that charlm did not make (a user's data file, a folder): never to be deleted."""
    return sorted(p.name + "/" * p.is_dir() for p in run.iterdir()
                  if p.is_dir() or not any(fnmatch.fnmatchcase(p.name, pattern) for pattern in MADE_HERE))


def _writable(path: Path, what: str) -> None:
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path} is not writable; choose a writable {{out}}", "out")


def check_out(out: Path, *, resume: bool, overwrite: bool) -> Path:
    """Refuse an --out that must not be written; returns it resolved. Cheap, so the CLI calls it before any data
    is read (and `train` again). Writes nothing, except to put back a run that a killed swap moved aside.

    A new run needs a new or empty directory, or (with `overwrite`) one that holds a charlm run and nothing else;
    resuming needs a charlm run with a checkpoint.
    """
    if resume and overwrite:
        raise UsageError("{resume} and {overwrite} exclude each other; pass one", "resume", "overwrite")
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise UsageError(f"{{out}} {out} is a broken symbolic link; remove it or choose another {{out}}", "out")
    out = out.resolve()
    recover_siblings(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{{out}} {out} is a file, not a directory; choose a directory", "out")
    if resume:
        if not out.exists():
            raise UsageError(f"{{out}} {out} does not exist, so there is no checkpoint to resume; run without "
                             "{resume} to start a new run", "out", "resume")
        if not is_run(out):
            raise UsageError(f"{out} is not a charlm run (no {MARKER}); pass the {{out}} of an earlier `train`", "out")
        if _marker(out).get("format") != FORMAT:
            raise UsageError(f"{out} was made by another version of charlm (run format "
                             f"{_marker(out).get('format')!r}, this one reads {FORMAT}); start a new run")
        if not (out / CHECKPOINTS["last"]).is_file():
            raise UsageError(f"{out} has no checkpoint to resume; run without {{resume}} to start a new run", "resume")
        _writable(out, "the run")
        _not_in_use(out)
        return out
    if out.is_dir():
        try:
            entries = any(out.iterdir())
        except OSError as e:
            raise UsageError(f"cannot read {{out}} {out}: {e.strerror}; choose another {{out}}", "out") from None
        if entries:
            if not is_run(out):
                raise UsageError(f"{{out}} {out} is not empty and holds no charlm run; nothing there is replaced: "
                                 "choose an empty or new directory", "out")
            foreign = _foreign(out)
            if foreign:
                raise UsageError(f"{{out}} {out} holds files charlm did not make ({', '.join(foreign[:3])}); "
                                 "move them out of the run or choose another {out}", "out")
            if not overwrite:
                raise UsageError(f"{out} already holds a run; pass {{resume}} to continue it or {{overwrite}} "
                                 "to replace it", "resume", "overwrite")
            _not_in_use(out)
        _writable(out, "{out}")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{{out}} {out}: {ancestor} is a file, not a directory; choose another {{out}}", "out")
    _writable(ancestor, "the directory")
    return out


def _not_in_use(run: Path) -> None:
    unlock(lock_run(run))


def recover_siblings(out: Path) -> None:
    """Undo what a `train` killed before its swap left beside `out` (see files.recover_siblings): only directories
    that carry the marker or hold nothing but what charlm writes (killed before the marker)."""
    _recover(out, lambda sibling: is_run(sibling) or not _foreign(sibling))


def clear_strays(run: Path) -> None:
    """Finish an epoch whose journal was written and remove half-written files (call with the run locked)."""
    finish_commit(run)
    clear_stale(run)
    for path in run.iterdir():
        if path.is_file() and any(fnmatch.fnmatchcase(path.name, pattern) for pattern in STRAYS):
            path.unlink()


def lock_run(run: Path) -> int | None:
    """Hold the run's marker locked while writing it (release with `unlock`); a second `train` is refused."""
    return lock(run / MARKER, f"another `train` is writing {run}; wait for it to finish or choose another --out")


def new_run_dir(out: Path) -> Path:
    """An empty run beside `out`, marker first; it replaces `out` once it holds a completed epoch."""
    run = staging_dir(out)
    write_text(run / MARKER, json.dumps({"toolkit": "charlm", "format": FORMAT}))
    return run


def swap_into_place(new: Path, out: Path, overwrite: bool) -> None:
    """Replace `out` by `new`: the old run moves aside, then goes (a kill in between: see recover_siblings).

    `out` is checked again, as it may have changed since the start: refused while another `train` writes a run
    there (so one of two concurrent runs wins whole), or when a run appeared there without `overwrite`."""
    if out.exists() and not is_run(out):
        try:
            out.rmdir()  # the empty directory checked at the start: never one that has filled up since
        except OSError:
            raise UsageError(f"{{out}} {out} is no longer empty; it was left as it is and the new run discarded",
                             "out") \
                from None
    if not out.exists():
        os.replace(new, out)
        return
    if not overwrite:
        raise UsageError(f"a run appeared in {out} while this one trained; it was left as it is and the new run "
                         "discarded (pass {overwrite} to replace it)", "overwrite")
    held = lock_run(out)
    try:
        if _foreign(out):
            raise UsageError(f"{{out}} {out} now holds files charlm did not make ({', '.join(_foreign(out)[:3])}); "
                             "it was left as it is and the new run discarded", "out")
        replace_dir(new, out)
    finally:
        unlock(held)


def commit(run: Path, files: dict[str, str]) -> None:
    """Rename an epoch's pending files (final name -> pending name) into place as one commit.

    The journal is the commit point: a kill before it leaves the previous epoch whole (the pending files are
    strays), a kill after it is completed by `finish_commit` on the next start.
    """
    write_text(run / JOURNAL, json.dumps(files))
    finish_commit(run)


def finish_commit(run: Path) -> None:
    journal = run / JOURNAL
    if not journal.is_file():
        return
    for final, pending in json.loads(journal.read_text(encoding="utf-8")).items():
        if (run / pending).exists():
            os.replace(run / pending, run / final)
    journal.unlink()


# --- what export-onnx may write ---------------------------------------------------------------------------------

def verify_path(model: Path) -> Path:
    """The check's record beside a model: model.onnx -> model.verify.json."""
    return model.with_name(model.name[:-len(".onnx")] + VERIFY_SUFFIX)


def export_target(run_dir: Path, out: Path | None, fp16: bool = False) -> Path:
    """The file an export writes: `out`, or the run's model.onnx (model.fp16.onnx). The one rule for it: an .onnx
    file, not a directory, and where a file is already there, a model charlm exported (it is replaced); its
    .verify.json likewise. So an export never overwrites a run's checkpoint, config or anything of a user's."""
    path = Path(out) if out is not None else Path(run_dir) / (MODEL_FP16 if fp16 else MODEL)
    if path.is_dir():
        raise UsageError(f"{{out}} {path} is a directory; name the .onnx file to write, e.g. {path / MODEL}",
                         "out")
    if not path.name.lower().endswith(".onnx") or path.name.lower() == ".onnx":
        raise UsageError(f"{{out}} {path} is not an .onnx file name; name the model file, e.g. "
                         f"{path.with_name(MODEL)}", "out")
    if path.exists() and not _exported(path):
        raise UsageError(f"{{out}} {path} exists and is not a model charlm exported; it is left as it is: choose "
                         "another {out}", "out")
    record = verify_path(path)
    if record.exists() and not _verify_record(record):
        raise UsageError(f"{record} exists and is not an export's record; it is left as it is: move it or choose "
                         "another {out}", "out")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{{out}} {path}: {ancestor} is a file, not a directory; choose another {{out}}", "out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{{out}} {path}: {ancestor} is not writable; choose another {{out}}", "out")
    return path


def _exported(path: Path) -> bool:
    """A file whose ONNX metadata is charlm's step contract."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf raises its own untyped errors for a foreign file
        return False
    return path.is_file() and contract.VOCAB in {p.key for p in proto.metadata_props}


def _verify_record(path: Path) -> bool:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and {"model", "max_abs_logit_diff", "tolerance"} <= record.keys()
