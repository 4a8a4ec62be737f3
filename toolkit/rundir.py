"""A run directory: the marker that says charlm made it, the checks before anything is written, the swap
that puts a new run in place, and the journal that commits an epoch's files together.

No TensorFlow here: the CLI runs these checks before it loads any.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent writers to one run are not detected there
    fcntl = None

from toolkit.files import _UMASK, UsageError, write_text

MARKER = "charlm-run.json"  # written first into every run: what may be replaced or resumed
FORMAT = 1
JOURNAL = ".commit.json"  # final name -> pending name of the files of one epoch, while they are renamed
PENDING = ".pending."  # prefix of an epoch's files before the journal commits them
# What charlm writes into a run: `train`'s files, `export-onnx`'s default outputs, and temporaries of killed writes.
MADE_HERE = (MARKER, JOURNAL, "config.json", "vocab.json", "history.csv", "last.keras", "best.keras",
             "reference.json.xz", "*.onnx", "*.verify.json", f"{PENDING}*", ".*.tmp*")
# Left only by a killed `train`: pending epoch files and atomic_path's temporaries of what train writes (another
# command's temporaries, such as a running export's, are not train's to remove).
STRAYS = (f"{PENDING}*", *(f".{Path(name).stem}.*.tmp{Path(name).suffix}" for name in (
    MARKER, JOURNAL, "config.json", "vocab.json", "reference.json.xz")))


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
        raise UsageError(f"{what} {path} is not writable; choose a writable --out")


def check_out(out: Path, *, resume: bool, overwrite: bool) -> Path:
    """Refuse an --out that must not be written; returns it resolved. Cheap, so the CLI calls it before any data
    is read (and `train` again). Writes nothing, except to put back a run that a killed swap moved aside.

    A new run needs a new or empty directory, or (with `overwrite`) one that holds a charlm run and nothing else;
    resuming needs a charlm run with a checkpoint.
    """
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other; pass one")
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise UsageError(f"--out {out} is a broken symbolic link; remove it or choose another --out")
    out = out.resolve()
    recover_siblings(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory; choose a directory")
    if resume:
        if not out.exists():
            raise UsageError(f"--out {out} does not exist, so there is no checkpoint to resume; run without "
                             "--resume to start a new run")
        if not is_run(out):
            raise UsageError(f"{out} is not a charlm run (no {MARKER}); pass the --out of an earlier `train`")
        if _marker(out).get("format") != FORMAT:
            raise UsageError(f"{out} was made by another version of charlm (run format "
                             f"{_marker(out).get('format')!r}, this one reads {FORMAT}); start a new run")
        if not (out / "last.keras").is_file():
            raise UsageError(f"{out} has no checkpoint to resume; run without --resume to start a new run")
        _writable(out, "the run")
        _not_in_use(out)
        return out
    if out.is_dir():
        try:
            entries = any(out.iterdir())
        except OSError as e:
            raise UsageError(f"cannot read --out {out}: {e.strerror}; choose another --out") from None
        if entries:
            if not is_run(out):
                raise UsageError(f"--out {out} is not empty and holds no charlm run; nothing there is replaced: "
                                 "choose an empty or new directory")
            foreign = _foreign(out)
            if foreign:
                raise UsageError(f"--out {out} holds files charlm did not make ({', '.join(foreign[:3])}); "
                                 "move them out of the run or choose another --out")
            if not overwrite:
                raise UsageError(f"{out} already holds a run; pass --resume to continue it or --overwrite "
                                 "to replace it")
            _not_in_use(out)
        _writable(out, "--out")
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"--out {out}: {ancestor} is a file, not a directory; choose another --out")
    _writable(ancestor, "the directory")
    return out


def _not_in_use(run: Path) -> None:
    handle = lock_run(run)
    if handle:
        handle.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        pass  # another user's process
    return True


def recover_siblings(out: Path) -> None:
    """Undo what a `train` killed before its swap left beside `out`: an unfinished new run goes, an old run
    moved aside goes back (or goes, when the new one is in place). Only directories of dead processes, and
    only ones that carry the marker or hold nothing but what charlm writes (killed before the marker)."""
    if not out.parent.is_dir():
        return
    for sibling in out.parent.iterdir():
        kind, _, rest = sibling.name.removeprefix(f".{out.name}.").partition("-")
        pid = rest.split("-")[0]
        if (not sibling.name.startswith(f".{out.name}.") or kind not in ("new", "old") or not pid.isdigit()
                or not sibling.is_dir() or _alive(int(pid)) or not (is_run(sibling) or not _foreign(sibling))):
            continue
        if kind == "old" and not out.exists():
            os.replace(sibling, out)  # killed between the two renames of a swap
        else:
            shutil.rmtree(sibling, ignore_errors=True)


def clear_strays(run: Path) -> None:
    """Finish an epoch whose journal was written and remove half-written files (call with the run locked)."""
    finish_commit(run)
    for path in run.iterdir():
        if path.is_file() and any(fnmatch.fnmatchcase(path.name, pattern) for pattern in STRAYS):
            path.unlink()


def lock_run(run: Path) -> IO | None:
    """Hold the run's marker locked while writing it; a second `train` on the same run is refused."""
    if fcntl is None:
        return None
    handle = open(run / MARKER, "rb")  # noqa: SIM115  held until training ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(f"another `train` is writing {run}; wait for it to finish or choose another --out") \
            from None
    return handle


def new_run_dir(out: Path) -> Path:
    """An empty run beside `out`, marker first; it replaces `out` once it holds a completed epoch."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        run = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-{os.getpid()}-"))
        os.chmod(run, 0o777 & ~_UMASK)  # mkdtemp makes 0700; the run gets the usual mode
    except OSError as e:
        raise UsageError(f"cannot write beside {out}: {e.strerror}; choose a writable --out") from None
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
            raise UsageError(f"--out {out} is no longer empty; it was left as it is and the new run discarded") \
                from None
    if not out.exists():
        os.replace(new, out)
        return
    if not overwrite:
        raise UsageError(f"a run appeared in {out} while this one trained; it was left as it is and the new run "
                         "discarded (pass --overwrite to replace it)")
    held = lock_run(out)
    try:
        if _foreign(out):
            raise UsageError(f"--out {out} now holds files charlm did not make ({', '.join(_foreign(out)[:3])}); "
                             "it was left as it is and the new run discarded")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old)
    finally:
        if held:
            held.close()


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
