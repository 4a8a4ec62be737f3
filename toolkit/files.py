"""Errors a user can fix, and the file rules every command keeps: writes that never leave a half-written file,
temporaries a later command can tell from a live one's, locks, and directories replaced whole."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

_UMASK = os.umask(0)
os.umask(_UMASK)

# A temporary file names the process writing it: `.STEM.PID-RANDOM.tmpSUFFIX`, so a later command removes only
# those whose process has died. A staging directory is `.NAME.new-PID-RANDOM`, an old one moved aside `.NAME.old-PID`.
_TEMPORARY = re.compile(r"\.(?P<pid>\d+)-[a-z0-9_]+\.tmp(\.[^.]+)*$")


class UsageError(Exception):
    """Bad input a user can fix: the CLI prints the message as one line and exits with status 2.

    A message names the library's parameters as `{name}` for each name in `params`: `str()` shows the name itself
    (`out`), and the CLI shows the flag that sets it in the command that ran (`--out`, or `--name` in `pipeline`), so
    no library message names a flag.
    """

    def __init__(self, message: str, *params: str):
        self.template, self.params = message, params
        super().__init__(self.render())

    def render(self, flags: Callable[[str], str] | None = None) -> str:
        """The message, each parameter shown as `flags(name)` (default: the name itself)."""
        if not self.params:
            return self.template
        pattern = re.compile(r"\{(" + "|".join(map(re.escape, self.params)) + r")\}")
        return pattern.sub(lambda m: flags(m[1]) if flags else m[1], self.template)


class InvalidParameter(UsageError):
    """A parameter out of its range: `parameter` names it as the library does, so a CLI can name its flag."""

    def __init__(self, parameter: str, requirement: str, value: object):
        self.parameter, self.requirement, self.value = parameter, requirement, value
        super().__init__(f"{{{parameter}}} {requirement}, not {value!r}", parameter)


def no_space(e: OSError) -> bool:
    """The disk (or the quota, or the file size limit) is full."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_failed(path: str | os.PathLike, e: OSError, where: str = "choose another location",
                 *params: str) -> UsageError:
    """The one line for a write that failed: the file, the system's words, and what to do (`where` may name
    `params`, as UsageError's message does)."""
    advice = "free some space or " + where if no_space(e) else where
    return UsageError(f"cannot write {path}: {e.strerror or e}; {advice}", *params)


def alive(pid: int) -> bool:
    """Whether a process with this id exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        pass  # another user's process
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it into place, on failure remove it.

    The temporary name keeps the suffix, since some writers (Keras, matplotlib) choose the format by it, and names
    this process, so that `clear_stale` can remove it should the process be killed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.{os.getpid()}-", suffix=f".tmp{path.suffix}")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}; choose a writable location") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a finished file gets the usual mode
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a file too large, a vanished directory: the caller's file, not our temporary
        raise write_failed(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """atomic_path for files that go together: every one is written before any is renamed into place, so a failed
    write (a full disk) leaves all of them as they were."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_path(p)) for p in paths]  # renamed in reverse order as the stack unwinds


def is_temporary(name: str) -> bool:
    """A name `atomic_path` gives its temporaries."""
    return name.startswith(".") and bool(_TEMPORARY.search(name))


def clear_stale(directory: str | os.PathLike) -> None:
    """Remove the temporaries that killed processes left in `directory` (a live process's are left alone)."""
    directory = Path(directory)
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            found = _TEMPORARY.search(entry.name)
            if entry.name.startswith(".") and found and not alive(int(found["pid"])) and entry.is_file():
                entry.unlink(missing_ok=True)


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
        tmp.write_bytes(data)


# --- directories replaced whole: built beside, then swapped in --------------------------------------------------------

def staging_dir(out: Path) -> Path:
    """A new, empty directory beside `out`, named for this process, to build `out`'s replacement in."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        new = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-{os.getpid()}-"))
        os.chmod(new, 0o777 & ~_UMASK)  # mkdtemp makes 0700; the directory gets the usual mode
    except OSError as e:
        raise UsageError(f"cannot write beside {out}: {e.strerror}; choose a writable location") from None
    return new


def replace_dir(new: Path, out: Path) -> None:
    """Put `new` in the place of `out`: an existing `out` moves aside, then goes (a kill in between is undone by
    `recover_siblings`)."""
    if not out.exists():
        os.replace(new, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old)


def recover_siblings(out: Path, ours: Callable[[Path], bool]) -> None:
    """Undo what a command killed before its swap left beside `out`: an unfinished new directory goes, an old one
    moved aside goes back (or goes, when the new one is in place). Only directories of dead processes, and only
    those `ours` recognises as made by charlm."""
    if not out.parent.is_dir():
        return
    for sibling in out.parent.iterdir():
        kind, _, rest = sibling.name.removeprefix(f".{out.name}.").partition("-")
        pid = rest.split("-")[0]
        if (not sibling.name.startswith(f".{out.name}.") or kind not in ("new", "old") or not pid.isdigit()
                or not sibling.is_dir() or alive(int(pid)) or not ours(sibling)):
            continue
        if kind == "old" and not out.exists():
            os.replace(sibling, out)  # killed between the two renames of a swap
        else:
            shutil.rmtree(sibling, ignore_errors=True)
