"""Run folders: long runs save each completed unit (a batch's node scores, a method's curve points) so that an
interrupted run continues where it stopped and ends with the result an uninterrupted run gives.

A run folder holds ``run.json`` (what the run is: command, inputs, settings; a resumed run must match it) and
one ``<unit>.pt`` per completed unit, each written atomically and read back with ``weights_only=True``. The
command line puts it beside the output (``c.json.run/``) or at ``--run-dir``, and removes it when the run
finishes.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

from .errors import UsageError
from .fileio import atomic_write_bytes, atomic_write_text

__all__ = ["RunDir", "fingerprint"]

MANIFEST = "run.json"


def fingerprint(obj: Any) -> str:
    """A short hash of a JSON-able description (used for task examples in the manifest)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunDir:
    """Completed units of one run. ``resume=False`` starts afresh (units of an earlier run in the folder are
    discarded); ``resume=True`` needs a folder made by the same run (same ``key``)."""

    def __init__(self, path: str | Path, key: dict, *, resume: bool = False):
        self.path = Path(path)
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))
        manifest = self.path / MANIFEST
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"run folder {self.path} is a file")
        if resume:
            if not manifest.is_file():
                raise UsageError(f"--resume: no interrupted run to continue in {self.path} (no {MANIFEST})")
            try:
                saved = json.loads(manifest.read_text())
            except (OSError, ValueError) as exc:
                raise UsageError(f"--resume: {manifest} is unreadable ({exc})") from None
            if saved != self.key:
                diff = sorted(k for k in set(saved) | set(self.key) if saved.get(k) != self.key.get(k))
                raise UsageError(f"--resume: the run in {self.path} was started with other settings (differs in: "
                                 f"{', '.join(diff)}); rerun without --resume to start afresh")
        else:
            if self.path.is_dir() and any(self.path.iterdir()) and not manifest.is_file():
                raise UsageError(f"run folder {self.path} exists and is not a featurecircuits run folder")
            if self.path.is_dir():
                shutil.rmtree(self.path)
            self.path.mkdir(parents=False)
            atomic_write_text(manifest, json.dumps(self.key, indent=1, sort_keys=True))

    def _file(self, unit: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", unit):
            raise ValueError(f"bad unit name {unit!r}")
        return self.path / f"{unit}.pt"

    def __contains__(self, unit: str) -> bool:
        return self._file(unit).is_file()

    def units(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.pt"))

    def load(self, unit: str):
        import torch

        return torch.load(self._file(unit), weights_only=True)

    on_save = None  # called before each unit is saved (the command line raises there once a signal came)

    def save(self, unit: str, value) -> None:
        import torch

        if self.on_save is not None:
            self.on_save()

        buf = io.BytesIO()
        torch.save(value, buf)
        atomic_write_bytes(self._file(unit), lambda f: f.write(buf.getvalue()))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
