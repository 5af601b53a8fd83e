"""Run folders of long commands (discover, curve, compare) and the signals that interrupt them."""

from __future__ import annotations

import signal
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path

from ..errors import UsageError
from .options import RunOptions

OUTPUT_FIELDS = ("out", "html", "run")  # request fields that name outputs, not what is computed


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (temporary files removed) but exiting 143."""


SIGNALLED: list[int] = []  # signals received; raised again at the next checkpoint should the first be swallowed
ACTIVE: list[Path] = []  # the run folder of the command running now (for the message when it is interrupted)


def on_signal(signum, frame):
    SIGNALLED.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def raise_if_signalled() -> None:
    """A KeyboardInterrupt raised inside a destructor or callback is printed and dropped by Python; the run
    then stops at its next checkpoint instead."""
    if SIGNALLED:
        raise Terminated() if SIGNALLED[0] == signal.SIGTERM else KeyboardInterrupt()


def run_folder(run: RunOptions, out: str) -> Path:
    """The run folder (--run-dir, or OUT.run beside the output), checked before any work: --resume needs an
    interrupted run there, and a folder that is not a run folder is never reused."""
    folder = Path(run.run_dir) if run.run_dir else Path(f"{Path(out)}.run")  # "cmp/" → "cmp.run"
    manifest = folder / "run.json"
    if run.resume and not manifest.is_file():
        raise UsageError(f"--resume: no interrupted run to continue in {folder} (no run.json)")
    if folder.is_dir() and not manifest.is_file() and any(folder.iterdir()):
        raise UsageError(f"run folder {folder} exists and is not a featurecircuits run folder; give --run-dir")
    return folder


def run_key(command: str, request, task=None, dictionaries=None, **extra) -> dict:
    """What a run is, for its run folder: the command, every option that affects the result (outputs left
    out), the task's examples and the dictionaries' hashes; a resumed run must match it."""
    from ..checkpoint import fingerprint

    options = {}
    for name, value in asdict(request).items():  # option groups flattened: keys are the options' own names
        if name not in OUTPUT_FIELDS:
            options.update(value if is_dataclass(getattr(request, name)) else {name: value})
    return {"command": command, **options, **extra,
            "examples": fingerprint(task.examples) if task is not None else None,
            "dictionary_hashes": {k: d.source.hash for k, d in (dictionaries or {}).items()}}


def open_run(run: RunOptions, out: str, key: dict):
    """The run folder of a long run (beside ``out``, or --run-dir), made or resumed."""
    from ..checkpoint import RunDir

    folder = run_folder(run, out)
    if not run.resume and (folder / "run.json").is_file():
        print(f"note: starting afresh; the interrupted run in {folder} is discarded (--resume continues it)",
              file=sys.stderr)
    opened = RunDir(folder, key, resume=run.resume)
    opened.on_save = raise_if_signalled
    ACTIVE.append(folder)
    return opened
