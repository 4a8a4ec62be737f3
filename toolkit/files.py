"""Errors a user can fix, and writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(directory: str | os.PathLike) -> Iterator[None]:
    """Hold a lock on `directory` (created if need be) while the block runs; a second command writing the same
    directory meanwhile is refused, so a directory never ends up holding files of two runs."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / ".charlm.lock", os.O_CREAT | os.O_RDWR, 0o666)
    except OSError as e:
        raise UsageError(f"cannot write {directory}: {e.strerror}; choose a writable location") from None
    try:
        try:
            _lock(fd)
        except OSError:
            raise UsageError(f"another command is writing {directory}; wait for it to finish or choose another "
                             "output directory") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock, also when the process dies


def _lock(fd: int) -> None:
    """A non-blocking exclusive lock on an open file: flock on POSIX, msvcrt.locking on Windows."""
    try:
        import fcntl
    except ImportError:
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


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
