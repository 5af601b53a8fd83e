"""A folder owned by one process at a time: a lock file in it holding the owner's pid, locked with ``flock``.

The lock is the kernel's: it is released when its owner exits, however it exits, so a lock file left by a
killed process (its pid gone) is free. A second process asking for a held folder gets
:class:`FolderInUse`, a :class:`~featurecircuits.errors.UsageError` naming the owner (pid, what it runs,
since when). Where the file system cannot ``flock`` (some network or FUSE mounts) the recorded pid decides:
a live pid on this host owns the folder, a dead one does not.

Within one process a folder is held once: asking again takes the lock over (``takeover=True``, what an
interrupted notebook cell followed by a resumed one needs) or is refused like another process
(``takeover=False``, what the command line does). Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from .errors import UsageError
from .fileio import pid_alive

__all__ = ["LOCK_FILE", "FolderInUse", "FolderLock", "holder"]

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_HELD: dict[str, FolderLock] = {}  # realpath of the folder → the lock this process holds on it

try:
    import fcntl
except ImportError:  # not POSIX: the recorded pid decides
    fcntl = None


class FolderInUse(UsageError):
    """The folder is held by another run (or, refused, by another run of this process)."""

    def __init__(self, folder: Path, owner: dict):
        self.folder, self.owner = Path(folder), owner
        super().__init__(f"{folder} is in use by {describe_owner(owner)}; wait for it to finish, or give another "
                         "folder (--run-dir, or another --out)")


def describe_owner(owner: dict) -> str:
    """``process 1234 (featurecircuits discover, since 2026-12-04 18:05:03 UTC)``, from a lock file's record."""
    pid = owner.get("pid", "?")
    this = " — this process" if pid == os.getpid() and owner.get("host") == socket.gethostname() else ""
    what = ", ".join(str(x) for x in (owner.get("command"), owner.get("started") and f"since {owner['started']}")
                     if x)
    host = f" on {owner['host']}" if owner.get("host") not in (None, socket.gethostname()) else ""
    return f"process {pid}{host}{this}" + (f" ({what})" if what else "")


def _record(command: str | None) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "command": command or " ".join(["featurecircuits", *sys.argv[1:2]]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if owner.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: cannot tell, so it is not taken from it
    return pid_alive(pid)


def holder(folder: str | Path) -> dict | None:
    """The record of whoever holds ``folder`` now (this process included), or None when it is free: no lock
    file, or one left by a process that has exited. Creates nothing."""
    folder = Path(folder)
    held = _HELD.get(os.path.realpath(folder))
    if held is not None:
        return held.owner
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return None
            except BlockingIOError:
                return _read(path) or {"pid": "?"}
            except OSError as exc:
                if exc.errno not in _NO_FLOCK:
                    raise
        owner = _read(path)
        return owner if _pid_alive(owner) and owner.get("pid") != os.getpid() else None
    finally:
        os.close(fd)


class FolderLock:
    """The lock on one folder, held by this process until :meth:`release` (or its exit)."""

    def __init__(self, folder: Path, fd: int | None, owner: dict):
        self.folder, self.fd, self.owner = folder, fd, owner
        self.token: object = None  # who in this process holds it now (a RunDir's token)

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    @classmethod
    def acquire(cls, folder: str | Path, *, command: str | None = None, takeover: bool = True,
                token: object = None) -> FolderLock:
        """Lock ``folder`` (which must exist) for this process; :class:`FolderInUse` when another holds it."""
        folder = Path(folder)
        real = os.path.realpath(folder)
        held = _HELD.get(real)
        if held is not None:
            if not takeover:
                raise FolderInUse(folder, held.owner)
            log.info("%s: taken over from an earlier run of this process", folder)
            held.token = token
            return held
        for attempt in range(5):  # a concurrent holder() peeks with a shared lock for an instant
            lock = cls._try(folder, command)
            if lock is not None:
                lock.token = token
                _HELD[real] = lock
                return lock
            time.sleep(0.02 * (attempt + 1))
        raise FolderInUse(folder, _read(folder / LOCK_FILE) or {"pid": "?"})

    @classmethod
    def _try(cls, folder: Path, command: str | None) -> FolderLock | None:
        path = folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not cls._flock(fd, path):
                os.close(fd)
                return None
            # the file may have been unlinked (released) between our open and our lock: lock the new one
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                os.close(fd)
                return cls._try(folder, command)
            owner = _record(command)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
            return cls(folder, fd, owner)
        except FileNotFoundError:
            os.close(fd)
            return cls._try(folder, command)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    @staticmethod
    def _flock(fd: int, path: Path) -> bool:
        """Lock the open lock file; False when another process holds it."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_FLOCK:
                    raise
        owner = _read(path)  # no flock here: a live pid on this host owns it
        return not (_pid_alive(owner) and owner.get("pid") != os.getpid())

    def release(self, token: object = None) -> None:
        """Give the folder up (the lock file removed); a no-op for a token that no longer holds it."""
        if self.fd is None or (token is not None and token is not self.token):
            return
        _HELD.pop(os.path.realpath(self.folder), None)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None
