"""Errors a user can fix, and writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

_UMASK = os.umask(0)
os.umask(_UMASK)


class UsageError(Exception):
    """Bad input a user can fix: the CLI prints the message as one line and exits with status 2."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it into place, on failure remove it.

    The temporary name keeps the suffix, since some writers (Keras, matplotlib) choose the format by it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}; choose a writable location") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a finished file gets the usual mode
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or Path(e.filename) != tmp:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None  # the caller's file, not our temporary, failed
    finally:
        tmp.unlink(missing_ok=True)


def lock(path: str | os.PathLike, busy: str) -> int | None:
    """Lock `path` (a file or a directory) until the returned descriptor goes to `unlock`; while it is held,
    another process's lock of it fails with UsageError(busy). A process that dies releases it. None on Windows,
    which has no advisory locks (concurrent writers are not detected there)."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(busy) from None
    return fd


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def exclusive(directory: str | os.PathLike) -> Iterator[None]:
    """Hold `directory` (created if need be) locked while the block runs; a second command writing it meanwhile
    is refused, so a directory never ends up holding files of two runs."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = lock(directory, f"another command is writing {directory}; wait for it to finish or choose another "
                             "output directory")
    except OSError as e:
        raise UsageError(f"cannot write {directory}: {e.strerror}; choose a writable location") from None
    try:
        yield
    finally:
        unlock(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a whole text file atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a whole file atomically."""
    with atomic_path(path) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as e:
            raise UsageError(f"cannot write {path}: {e.strerror}; free some space or choose another location") \
                from None
