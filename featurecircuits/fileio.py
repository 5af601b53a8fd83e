"""Atomic file writes: a temp file in the same folder, then ``os.replace``; nothing is half-written.

- Files get the permissions the user's umask gives a new file (``mkstemp`` alone would make them 0600).
- Several files written together (a circuit's JSON and its HTML) are all written to temp files first and
  then moved into place with SIGINT/SIGTERM held back, so they are all new or all old.
- Temp files are named ``.<name>.fc-<pid>-<random>.tmp``; one left behind by a killed process (whose pid is
  gone) is removed by the next write to the same file.
- A write that fails (a full disk, a file-size limit, a quota, a read-only folder) raises
  :class:`WriteError`, an ``OSError`` whose message names the file, and leaves the file as it was.

Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["WriteError", "atomic_write_bytes", "atomic_write_many", "atomic_write_text", "umask_mode"]

_TMP = re.compile(r"^\.(?P<name>.+)\.fc-(?P<pid>\d+)-[^.]*\.tmp$")


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` with the process umask applied (what ``open(path, "w")`` would create)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (one we may not signal counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Temp files for ``path`` left by processes that no longer exist."""
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        m = _TMP.match(entry.name)
        if m and m["name"] == path.name and not pid_alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


class WriteError(OSError):
    """A file could not be written; the message names it (and what to do about a full disk or a limit)."""

    HINTS = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "the disk quota is used up",
             errno.EFBIG: "the file exceeds the file-size limit (ulimit -f) or the file system's largest file"}

    def __init__(self, path: Path, exc: OSError):
        super().__init__(exc.errno, exc.strerror or str(exc), str(path))

    def __str__(self) -> str:
        hint = self.HINTS.get(self.errno)
        return f"cannot write {self.filename}: {self.strerror}" + (f" ({hint})" if hint else "")


def _write_temp(path: Path, write: Callable) -> str:
    _remove_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.fc-{os.getpid()}-", suffix=".tmp")
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, umask_mode())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError) and exc.errno is not None:
            raise WriteError(path, exc) from None
        raise
    return tmp


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT/SIGTERM back (main thread, POSIX) while files move into place."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def atomic_write_many(files: Mapping[str | Path, bytes | str | Callable]) -> None:
    """Write several files so that they are all replaced or none is: every temp file first, then the moves."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, content in files.items():
            path = Path(path)
            if callable(content):
                write = content
            else:
                data = content.encode() if isinstance(content, str) else content
                write = lambda f, d=data: f.write(d)  # noqa: E731
            temps.append((_write_temp(path, write), path))
        with _signals_held():
            for tmp, path in temps:
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    raise WriteError(path, exc) from None
            temps = []
    finally:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_bytes(path: Path, write) -> None:
    """Write via a temp file in the same folder and ``os.replace``, so nothing is half-written."""
    atomic_write_many({path: write})


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_many({path: text})
