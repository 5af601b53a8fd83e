"""Run folders of long commands (discover, curve, compare) and the signals that interrupt them.

A run folder belongs to one run at a time (locked, :mod:`featurecircuits.locking`); a second run on it is
refused, naming the process that holds it. Its manifest records what made it (the command, every option
that affects the result, hashes of the task's examples and of the dictionaries: :func:`run_key`) and each
checkpoint's hash (:class:`featurecircuits.checkpoint.RunDir`). Nothing in it is discarded unless asked:
an interrupted run there is continued with ``--resume`` or discarded with ``--restart``, and without either
the command stops before any work, saying so.

Under torchrun each rank keeps its own units in ``rank-<r>/`` of the run folder, a run folder of its own
(locked, with its manifest); rank 0 writes the outputs and then removes them all.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path

from ..errors import UsageError
from .options import RunOptions

OUTPUT_FIELDS = ("out", "html", "run")  # request fields that name outputs, not what is computed
NOT_IN_KEY = ("batch_size_given",)  # how an option was given, not what it is


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (temporary files removed) but exiting 143."""


SIGNALLED: list[int] = []  # signals received; raised again at the next checkpoint should the first be swallowed
ACTIVE: list[Path] = []  # the run folder of the command running now (for the message when it is interrupted)
OPEN: list = []  # the RunDirs the command opened: closed (lock released) however it ends


def on_signal(signum, frame):
    SIGNALLED.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def raise_if_signalled() -> None:
    """A KeyboardInterrupt raised inside a destructor or callback is printed and dropped by Python; the run
    then stops at its next checkpoint instead."""
    if SIGNALLED:
        raise Terminated() if SIGNALLED[0] == signal.SIGTERM else KeyboardInterrupt()


def run_folder(run: RunOptions, out: str, command: str | None = None) -> Path:
    """The run folder (--run-dir, or OUT.run beside the output), checked before any work: not held by another
    run; --resume needs an interrupted run there (of ``command``, its checkpoints matching their hashes); an
    interrupted run is continued or discarded only when --resume or --restart says so; a folder that is not a
    run folder is never reused."""
    from ..checkpoint import check_resumable, describe_run, foreign_entries, is_run_folder
    from ..locking import FolderInUse, holder

    base = Path(run.run_dir) if run.run_dir else Path(f"{Path(out)}.run")  # "cmp/" → "cmp.run"
    rank, world = _ranks()
    _check_layout(base, run, world)
    folder = base / f"rank-{rank}" if world > 1 else base
    owner = holder(folder)
    if owner is not None:
        raise FolderInUse(folder, owner)
    if run.resume and not is_run_folder(folder):
        raise UsageError(f"--resume: no interrupted run to continue in {folder} (no run.json)")
    if run.resume:
        check_resumable(folder, command)
    if folder.is_dir() and not is_run_folder(folder) and foreign_entries(folder):
        raise UsageError(f"run folder {folder} exists and is not a featurecircuits run folder; give --run-dir")
    if is_run_folder(folder) and not (run.resume or run.restart):
        raise UsageError(f"{folder} holds an interrupted run, {describe_run(folder)}: pass --resume to continue it "
                         "or --restart to discard it (or give another --run-dir)")
    return folder


def _ranks() -> tuple[int, int]:
    from .. import distributed

    return distributed.rank(), distributed.world_size()


def _check_layout(base: Path, run: RunOptions, world: int) -> None:
    """A run folder holds either one process's run or the rank folders of a torchrun launch's: one is never
    continued, nor silently discarded, as the other."""
    from ..checkpoint import describe_run, is_run_folder, rank_folders
    from ..locking import FolderInUse, holder

    ranks = rank_folders(base)
    for folder in [base] if world > 1 else ranks:  # what this run would discard or continue, held by another
        if (owner := holder(folder)) is not None:
            raise FolderInUse(folder, owner)
    if run.restart:
        return
    if world > 1 and is_run_folder(base):
        raise UsageError(f"{base} holds an interrupted one-process run, {describe_run(base)}: continue it without "
                         "torchrun (--resume), or pass --restart to discard it")
    if world == 1 and ranks:
        raise UsageError(f"{base} holds an interrupted run over {len(ranks)} ranks: continue it with torchrun "
                         f"--nproc-per-node {len(ranks)} and --resume, or pass --restart to discard it")


def run_key(command: str, request, task=None, dictionaries=None, **extra) -> dict:
    """What a run is, for its run folder: the command, every option that affects the result (outputs left
    out), the task's examples and the dictionaries' hashes; a resumed run must match it."""
    from ..checkpoint import fingerprint

    options = {}
    for name, value in asdict(request).items():  # option groups flattened: keys are the options' own names
        if name not in OUTPUT_FIELDS:
            options.update(value if is_dataclass(getattr(request, name)) else {name: value})
    options = {k: v for k, v in options.items() if k not in NOT_IN_KEY}
    world = _ranks()[1]
    if world > 1:  # each rank's units hold its share of the pairs, which the number of ranks decides
        extra = {**extra, "world_size": world}
    return {"command": command, **options, **extra,
            "examples": fingerprint(task.examples) if task is not None else None,
            "dictionary_hashes": {k: d.source.hash for k, d in (dictionaries or {}).items()}}


def open_run(run: RunOptions, out: str, key: dict):
    """The run folder of a long run (beside ``out``, or --run-dir), made, restarted or resumed, and held by
    this run until it ends."""
    from ..checkpoint import RunDir, clear_for_ranks, describe_run, is_run_folder

    folder = run_folder(run, out)
    rank, world = _ranks()
    if world > 1:
        folder.parent.mkdir(exist_ok=True)
        if run.restart and rank == 0:
            clear_for_ranks(folder.parent, world)
    if run.restart and is_run_folder(folder) and rank == 0:
        print(f"note: --restart: discarding {describe_run(folder)} in {folder}", file=sys.stderr)
    opened = RunDir(folder, key, resume=run.resume, takeover=False)
    opened.on_save = raise_if_signalled
    OPEN.append(opened)
    ACTIVE.append(folder.parent if world > 1 else folder)
    return opened


def hand_over(checkpoint) -> bool:
    """Whether this process writes the outputs: under torchrun rank 0, once every other rank has closed its run
    folder (its units kept until the outputs are written) and is done."""
    from .. import distributed

    if not distributed.active():
        return True
    if not distributed.is_main():
        checkpoint.close()
    distributed.barrier()
    if distributed.is_main():
        return True
    distributed.barrier()  # rank 0 has written the outputs (finish): this rank's folder goes, on its own machine too
    _remove_rank_folder(checkpoint.path)
    return False


def _remove_rank_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # the run's folder, once empty (on a machine without a shared filesystem too)


def finish(checkpoint) -> None:
    """The outputs are written: the run folder goes (under torchrun, every rank's and the folder holding them)."""
    from .. import distributed
    from ..checkpoint import remove_rank_folders

    checkpoint.remove()
    if distributed.active():
        remove_rank_folders(checkpoint.path.parent)
        distributed.barrier()  # the other ranks wait for this in hand_over, then remove their own folders


def close_all() -> None:
    """Release every run folder this command opened (completed units stay for --resume)."""
    while OPEN:
        opened = OPEN.pop()
        opened.close()
        if opened.path.name.startswith("rank-"):  # a rank's folder: the run's folder goes too if left empty
            with contextlib.suppress(OSError):
                opened.path.parent.rmdir()
