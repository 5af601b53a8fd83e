"""Run folders: long runs save each completed unit (a batch's node scores, a method's curve points) so that an
interrupted run continues where it stopped and ends with the result an uninterrupted run gives.

A run folder holds ``run.json`` (the manifest: what made the run — its key: command, settings, hashes of its
inputs — and the sha256 and size of every completed unit), one ``<unit>.pt`` per completed unit, and, while
a run is on it, ``run.lock`` (:mod:`featurecircuits.locking`): one run per folder at a time. A unit and its
manifest entry are written together (:func:`featurecircuits.fileio.atomic_write_many`) and read back with
``weights_only=True`` only when their hash matches, so a checkpoint that was edited, truncated, emptied or
swapped for another is refused, naming the file, instead of resumed into a wrong result. The command line
puts the folder beside the output (``c.json.run/``) or at ``--run-dir``, and removes it when the run finishes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import weakref
from pathlib import Path
from typing import Any

from .errors import UsageError
from .fileio import atomic_write_many, atomic_write_text
from .locking import LOCK_FILE, FolderLock

__all__ = ["MANIFEST", "RunDir", "check_resumable", "clear_for_ranks", "describe_run", "fingerprint", "is_run_folder",
           "rank_folders", "remove_rank_folders"]

MANIFEST = "run.json"
SCHEMA = "featurecircuits.run"
VERSION = 2
_TEMP = re.compile(r"^\..+\.fc-\d+-[^.]*\.tmp$")  # fileio's temp files
_RANK = re.compile(r"^rank-\d+$")  # under torchrun, each rank's run folder inside the run's folder


def fingerprint(obj: Any) -> str:
    """A short hash of a JSON-able description (used for task examples in the manifest)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_manifest(folder: Path) -> dict | None:
    """The manifest's JSON object (either version), or None when there is none or it cannot be read."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_run_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run folder's manifest."""
    return (Path(folder) / MANIFEST).is_file()


def foreign_entries(folder: Path) -> list[str]:
    """What a folder holds besides what a run folder holds (its manifest, units, lock and temp files)."""
    ours = {MANIFEST, LOCK_FILE}
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if n not in ours and not n.endswith(".pt") and not _TEMP.match(n)
                  and not (_RANK.match(n) and (folder / n).is_dir()))


def rank_folders(folder: str | Path) -> list[Path]:
    """The run folders of a torchrun launch's ranks in ``folder`` (``rank-0/``, ``rank-1/``, …)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [folder / n for n in os.listdir(folder) if _RANK.match(n) and is_run_folder(folder / n)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def clear_for_ranks(folder: Path, world_size: int) -> None:
    """Before a restarted run over ``world_size`` ranks: what else ``folder`` holds of earlier runs (a
    one-process run's manifest and units, the folders of ranks this launch does not have) is removed."""
    for name in os.listdir(folder):
        target = folder / name
        if _RANK.match(name) and target.is_dir():
            if int(name.split("-")[1]) >= world_size:
                shutil.rmtree(target, ignore_errors=True)
        elif name == MANIFEST or name == LOCK_FILE or name.endswith(".pt") or _TEMP.match(name):
            with contextlib.suppress(OSError):
                target.unlink()


def remove_rank_folders(folder: Path) -> None:
    """A finished torchrun launch: every rank's run folder (each closed by its rank) and, if then empty, the
    folder holding them."""
    for rank in rank_folders(folder):
        shutil.rmtree(rank, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def describe_run(folder: str | Path) -> str:
    """What the run in ``folder`` is, for messages: ``a discover run (2 checkpoints)``."""
    data = _read_manifest(Path(folder))
    if data is None:
        return "a run whose run.json cannot be read"
    key = data.get("key") if data.get("schema") == SCHEMA else data
    command = key.get("command") if isinstance(key, dict) else None
    units = data.get("units") if data.get("schema") == SCHEMA else None
    made = data.get("made") or {}
    parts = [f"{len(units)} checkpoint{'s' * (len(units) != 1)}" if isinstance(units, dict) else
             "checkpoints without hashes, from an older featurecircuits"]
    if made.get("started"):
        parts.append(f"started {made['started']}")
    return f"{'a ' + str(command) if command else 'an unnamed'} run ({', '.join(parts)})"


def _diff(saved: dict, key: dict) -> list[str]:
    return sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))


def _unit_file(folder: Path, unit: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", unit):
        raise ValueError(f"bad unit name {unit!r}")
    return folder / f"{unit}.pt"


def _read_unit(folder: Path, unit: str) -> bytes:
    path = _unit_file(folder, unit)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"checkpoint {path} is listed in {folder / MANIFEST} but missing; pass --restart to start "
                         "afresh") from None
    except OSError as exc:
        raise UsageError(f"checkpoint {path} cannot be read ({exc.strerror or exc})") from None


def _check_unit(folder: Path, unit: str, record, data: bytes) -> None:
    """The unit's bytes against the sha256 its manifest entry records."""
    path = _unit_file(folder, unit)
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise UsageError(f"{folder / MANIFEST}: the entry of checkpoint {path.name} has no sha256; pass --restart to "
                         "start afresh")
    digest = hashlib.sha256(data).hexdigest()
    if digest != record["sha256"]:
        size = f"{len(data)} bytes, saved with {record.get('bytes', '?')}"
        raise UsageError(f"checkpoint {path} has changed since it was saved ({size}; sha256 {digest[:12]}…, recorded "
                         f"{record['sha256'][:12]}…): it was edited, truncated or replaced, so it is not resumed; pass "
                         "--restart to start afresh")


def check_resumable(folder: str | Path, command: str | None = None) -> dict:
    """The manifest of a run folder that can be resumed, checked without loading anything: made by this
    version, by ``command`` (when given), and every checkpoint matching its recorded hash; a UsageError naming
    the folder or the file otherwise."""
    folder = Path(folder)
    data = _read_manifest(folder)
    where = folder / MANIFEST
    if data is None:
        raise UsageError(f"--resume: {where} is unreadable or not a JSON object; pass --restart to start afresh")
    if data.get("schema") != SCHEMA or data.get("version") != VERSION:
        raise UsageError(f"--resume: the run in {folder} was made by an older featurecircuits (its checkpoints carry "
                         "no hashes, so they cannot be checked); pass --restart to start afresh")
    key = data.get("key") if isinstance(data.get("key"), dict) else {}
    if command is not None and key.get("command") != command:
        raise UsageError(f"--resume: {folder} holds {describe_run(folder)}, not a {command} run; give another "
                         "folder, or pass --restart to discard it")
    units = data.get("units")
    if not isinstance(units, dict):
        raise UsageError(f"--resume: {where} lists no units; pass --restart to start afresh")
    for unit, record in units.items():
        _check_unit(folder, unit, record, _read_unit(folder, unit))
    return data


class RunDir:
    """Completed units of one run, in a folder this run holds (locked) until :meth:`close` or :meth:`remove`.

    ``resume=False`` starts afresh (units of an earlier run in the folder are discarded; a folder that is not
    a run folder is never touched); ``resume=True`` needs a folder made by the same run (same ``key``) whose
    checkpoints all match their recorded hashes. ``takeover``: whether a folder this process already holds
    (an earlier, interrupted RunDir) may be taken over, or is refused like one held by another process."""

    def __init__(self, path: str | Path, key: dict, *, resume: bool = False, takeover: bool = True):
        self.path = Path(path)
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))
        self._token = object()
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"run folder {self.path} is a file")
        if resume and not is_run_folder(self.path):
            raise UsageError(f"--resume: no interrupted run to continue in {self.path} (no {MANIFEST})")
        if self.path.is_dir() and not is_run_folder(self.path) and foreign_entries(self.path):
            raise UsageError(f"run folder {self.path} exists and is not a featurecircuits run folder "
                             f"(it holds {', '.join(foreign_entries(self.path)[:3])}); give another folder")
        created = not self.path.exists()
        self._owned = created or is_run_folder(self.path)  # removed again when nothing was saved in it
        self.path.mkdir(parents=False, exist_ok=True)
        try:
            command = self.key.get("command")
            self._lock = FolderLock.acquire(self.path, command=f"featurecircuits {command}" if command else None,
                                            takeover=takeover, token=self._token)
            self._resumed = resume
            self._manifest = self._verified() if resume else self._fresh()
        except BaseException:
            lock = getattr(self, "_lock", None)
            if lock is not None:
                lock.release(self._token)
            if created:
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        self._finalizer = weakref.finalize(self, self._lock.release, self._token)

    # -- opening --------------------------------------------------------------------------------------
    def _fresh(self) -> dict:
        for name in os.listdir(self.path):  # an earlier run's units (a resume=False start discards them)
            if name == LOCK_FILE:
                continue
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        manifest = {"schema": SCHEMA, "version": VERSION, "key": self.key, "made": self._lock.owner, "units": {}}
        atomic_write_text(self.path / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        return manifest

    def _verified(self) -> dict:
        data = check_resumable(self.path, self.key.get("command"))
        if data["key"] != self.key:
            raise UsageError(f"--resume: the run in {self.path} was started with other settings (differs in: "
                             f"{', '.join(_diff(data['key'], self.key))}); rerun with the same options, or pass "
                             "--restart to discard it and start afresh")
        return data

    # -- units ----------------------------------------------------------------------------------------
    def _file(self, unit: str) -> Path:
        return _unit_file(self.path, unit)

    def __contains__(self, unit: str) -> bool:
        return unit in self._manifest["units"] and self._file(unit).is_file()

    def units(self) -> list[str]:
        return sorted(self._manifest["units"])

    def load(self, unit: str):
        import torch

        if unit not in self._manifest["units"]:
            raise KeyError(f"no checkpoint {unit!r} in {self.path}")
        record = self._manifest["units"][unit]
        data = _read_unit(self.path, unit)
        _check_unit(self.path, unit, record, data)
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception as exc:
            raise UsageError(f"checkpoint {self._file(unit)} cannot be read ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:160]}); pass --restart to start afresh") from None

    on_save = None  # called before each unit is saved (the command line raises there once a signal came)

    def save(self, unit: str, value) -> None:
        """Save one unit and its hash together (both new, or both as they were)."""
        import torch

        if not self._lock.held or self._lock.token is not self._token:
            raise RuntimeError(f"run folder {self.path} is no longer held by this RunDir (closed, or taken over)")
        if self.on_save is not None:
            self.on_save()
        buf = io.BytesIO()
        torch.save(value, buf)
        data = buf.getvalue()
        manifest = {**self._manifest, "units": {**self._manifest["units"],
                                                unit: {"sha256": hashlib.sha256(data).hexdigest(),
                                                       "bytes": len(data)}}}
        atomic_write_many({self._file(unit): data, self.path / MANIFEST: json.dumps(manifest, indent=1,
                                                                                      sort_keys=True)})
        self._manifest = manifest

    # -- closing --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Give the folder up, keeping the completed units for a resume; a fresh run that completed none
        leaves nothing behind."""
        if self._lock.token is not self._token:
            return
        if self._lock.held and not self._resumed and not self._manifest["units"]:
            self.remove()
            return
        self._lock.release(self._token)

    def remove(self) -> None:
        """Remove the folder and everything in it (the run finished)."""
        if self._lock.token is not self._token:
            return
        if self.path.is_dir():
            for name in os.listdir(self.path):
                if name != LOCK_FILE:
                    target = self.path / name
                    with contextlib.suppress(OSError):
                        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        self._lock.release(self._token)
        if self._owned:
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
