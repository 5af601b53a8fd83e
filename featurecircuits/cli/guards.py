"""Checks made before any work: outputs that cannot be written or would overwrite an input of the run or
another of its outputs, and a --model that names a path. Torch-free."""

from __future__ import annotations

import os
from pathlib import Path

from ..dictionaries.spec import local_paths
from ..errors import UsageError
from ..paths import ORGANISM_DIR
from ..registry import GGUF_PACKAGES, ORGANISM


def input_paths(*, task: str | None = None, circuit: str | None = None, model: str | None = None,
                dictionaries: str | None = None) -> dict[str, Path]:
    """The files and folders a run reads (those that exist), by what they are."""
    out: dict[str, Path] = {}
    if task and Path(task).exists():
        out["task file (--task)"] = Path(task)
    if circuit:
        out["circuit file (--circuit)"] = Path(circuit)
    if model == ORGANISM:
        out["organism model"] = ORGANISM_DIR
    elif model and Path(model).exists():
        out["model (--model)"] = Path(model)
    for i, path in enumerate(local_paths(dictionaries)):
        out["dictionaries" + (f" ({path})" if i else "")] = path
    return {k: v for k, v in out.items() if v.exists()}


def _same(a: Path, b: Path) -> bool:
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    if ra == rb or ra.startswith(rb.rstrip(os.sep) + os.sep):  # a is b, or inside folder b
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class _Claims:
    """Output paths claimed so far: none may be an input or claimed twice."""

    def __init__(self, inputs: dict[str, Path]):
        self.inputs = inputs
        self.written: dict[str, tuple[str, Path]] = {}  # realpath → (option, path)

    def claim(self, option: str, path: Path) -> None:
        for what, src in self.inputs.items():
            if _same(path, src):
                raise UsageError(f"{option} {path} would overwrite the {what} ({src}); write it elsewhere")
        real = os.path.realpath(path)
        if real in self.written:
            raise UsageError(f"{option} and {self.written[real][0]} both name {path}; give them different files")
        self.written[real] = (option, path)


def _check_file(claims: _Claims, option: str, path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; give a file name (e.g. {path / 'out'}...)")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: folder {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path} exists and is read-only")
    claims.claim(option, path)


def _check_folder(claims: _Claims, option: str, folder: Path, names: list[str]) -> None:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder} is a file; give a folder")
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {folder}: {existing} is not writable")
    if not names:  # the folder is ours as a whole (a run folder)
        claims.claim(option, folder)
        for what, src in claims.inputs.items():
            if _same(src, folder):
                raise UsageError(f"{option} {folder} holds the {what} ({src}); give another folder")
    for n in names:
        target = folder / n
        if target.is_dir():
            raise UsageError(f"{option} {folder}: {target} is a directory")
        claims.claim(option, target)


def check_outputs(inputs: dict[str, Path], files: dict[str, str | None],
                  folders: dict[str, tuple[str | None, list[str]]] | None = None) -> None:
    """Refuse, before any work, outputs that cannot be written or that would overwrite an input of this run
    or another of its outputs. ``files``: option → output file; ``folders``: option → (folder, the file
    names written into it; none: the folder is the run's as a whole)."""
    claims = _Claims(inputs)
    for option, name in files.items():
        if name:
            _check_file(claims, option, Path(name))
    for option, (name, names) in (folders or {}).items():
        if name:
            _check_folder(claims, option, Path(name), names)


def check_model_option(model: str | None) -> None:
    """A --model that names a path must be a model folder (with config.json) or a .gguf file; checked before
    anything loads (a missing folder would otherwise be tried as a hub id, with network retries)."""
    if model is None or model == ORGANISM or model in GGUF_PACKAGES:
        return
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise UsageError(f"--model {model}: GGUF file does not exist")
        return
    if path.is_absolute() or model.startswith((".", "~")) or path.exists() or model.count("/") > 1:
        if not path.exists():
            raise UsageError(f"--model {model}: no such folder (give 'organism', a model folder with config.json, "
                             f"a hub id such as EleutherAI/pythia-70m-deduped, 'smollm2' or a .gguf file)")
        if not path.is_dir():
            raise UsageError(f"--model {model} is a file, not a model folder (or a .gguf file)")
        if not (path / "config.json").is_file():
            raise UsageError(f"--model {model}: the folder has no config.json, so it is not a model folder")
