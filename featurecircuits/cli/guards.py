"""Checks made before any work: outputs that cannot be written or would overwrite an input of the run or
another of its outputs, a --model that names a path, the placement options (--device, --device-map,
--offload-folder) and the --dictionaries spec. Output folders a command is about to make are remembered
(:data:`NEW_FOLDERS`) so that a command that fails leaves none behind. Torch-free but for the availability
of an accelerator --device names."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..dictionaries.spec import local_paths, parse_spec
from ..errors import UsageError
from ..paths import ORGANISM_DIR
from ..registry import GGUF_PACKAGES, ORGANISM, TASK_NAMES

NEW_FOLDERS: list[Path] = []  # output folders that did not exist when the command was checked


def input_paths(*, task: str | None = None, circuit: str | None = None, model: str | None = None,
                dictionaries: str | None = None) -> dict[str, Path]:
    """The files and folders a run reads (those that exist), by what they are. A task name is a task name,
    whatever the current folder holds (see :func:`featurecircuits.cli.inputs.file_task`)."""
    out: dict[str, Path] = {}
    if task and task not in TASK_NAMES and Path(task).exists():
        out["task file (--task)"] = Path(task)
    if circuit:
        out["circuit file (--circuit)"] = Path(circuit)
    if model == ORGANISM:
        out["organism model"] = ORGANISM_DIR
    elif model and Path(model).exists():
        out["model (--model)"] = Path(model)
    for i, path in enumerate(_dictionary_paths(dictionaries)):
        out["dictionaries" + (f" ({path})" if i else "")] = path
    return {k: v for k, v in out.items() if v.exists()}


def _dictionary_paths(spec: str | None) -> list[Path]:
    """The local paths of a --dictionaries spec; a spec that does not parse is an error naming the option."""
    try:
        if spec is not None:
            parse_spec(spec)
        return local_paths(spec)
    except ValueError as exc:
        raise UsageError(f"--dictionaries {spec!r}: {exc}") from None


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
                inside = src.is_dir() and os.path.realpath(path) != os.path.realpath(src) and not path.exists()
                verb = f"would write into the folder of the {what}" if inside else f"would overwrite the {what}"
                raise UsageError(f"{option} {path} {verb} ({src}); write it elsewhere")
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


def _existing_folder(option: str, folder: Path) -> Path:
    """The folder, or the nearest of its parents that exists, where the folder can be made: a writable folder
    (not a file)."""
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{option} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {folder}: {existing} is not writable")
    return existing


def _check_folder(claims: _Claims, option: str, folder: Path, names: list[str]) -> None:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder} is a file; give a folder")
    absolute = folder.absolute()
    existing = _existing_folder(option, folder)
    if names and existing != absolute:  # made by this command: removed again should it fail (a run folder
        NEW_FOLDERS.append(existing / absolute.relative_to(existing).parts[0])  # keeps its completed units)
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


def remove_new_folders() -> None:
    """Remove the output folders this command made (it failed or was interrupted: nothing half-made stays)."""
    while NEW_FOLDERS:
        folder = NEW_FOLDERS.pop()
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


def check_curve_thresholds(thresholds: list[float] | None, *, absolute: bool) -> None:
    """Curve thresholds that can give a curve: at least two different ones, relative ones at most 1 (above
    the largest score no node is kept)."""
    if thresholds is None:
        return
    shown = ",".join(f"{t:g}" for t in thresholds)
    if len(set(thresholds)) < 2:
        raise UsageError(f"--thresholds {shown}: a curve needs at least two different thresholds (its AUC needs two "
                         "circuit sizes)")
    if not absolute and max(thresholds) > 1:
        raise UsageError(f"--thresholds {shown}: relative thresholds are fractions of each method's largest |score|, "
                         "so above 1 no node is kept; give values in [0, 1], or --absolute for absolute scores")


# --------------------------------------------------------------------------------------------------
# Placement

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE = re.compile(r"^(?P<type>[a-z]+)(?::(?P<index>\d+))?$")


def check_device(device: str, option: str = "--device") -> None:
    """A device this machine has: cpu, cuda[:N], mps or xpu[:N] (``meta`` holds no weights)."""
    m = _DEVICE.match(device.strip())
    if device.strip() == "meta":
        raise UsageError(f"{option} meta: the meta device holds no weights (it is for shapes only); give cpu or an "
                         "accelerator such as cuda")
    if m is None or m["type"] not in DEVICE_TYPES or (m["index"] is not None and m["type"] in ("cpu", "mps")):
        raise UsageError(f"{option} {device!r} is not a device; valid: cpu, cuda, cuda:N, mps, xpu, xpu:N")
    kind, index = m["type"], int(m["index"] or 0)
    if kind == "cpu":
        return
    import torch

    backend = {"cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None), "xpu": getattr(torch, "xpu", None)}
    module = backend[kind]
    if module is None or not module.is_available():
        raise UsageError(f"{option} {device}: this machine has no {kind.upper() if kind != 'mps' else 'MPS'} device "
                         "(or this torch was built without it); use --device cpu")
    count = module.device_count() if hasattr(module, "device_count") else 1
    if index >= count:
        raise UsageError(f"{option} {device}: this machine has {count} {kind} device{'s' * (count != 1)} "
                         f"({kind}:0 … {kind}:{count - 1})")


def _device_map_values(options) -> list:
    """The devices of a --device-map (its JSON object's values; none for a named strategy)."""
    try:
        placement = options.placement()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    device_map = placement.get("device_map")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_NAMES:
            raise UsageError(f"--device-map {device_map!r}: give one of {', '.join(DEVICE_MAP_NAMES)} or a JSON object "
                             "of module path → device")
        return []
    if not isinstance(device_map, dict) or not device_map:
        raise UsageError("--device-map: the JSON object must map module paths to devices, e.g. "
                         '{"gpt_neox.embed_in": 0, "gpt_neox.layers": "disk"}')
    return list(device_map.values())


def _check_offload_folder(folder: str) -> None:
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--offload-folder {folder} is a file; give a folder")
    _existing_folder("--offload-folder", path)


def check_placement(options) -> None:
    """--device, --device-map and --offload-folder, before any model loads: devices this machine has, a
    device map that accelerate can use, and an offload folder that can be written (only with --device-map)."""
    if options.device is not None:
        if options.device_map is not None:
            raise UsageError("give --device or --device-map, not both (a device map places every module itself)")
        check_device(options.device)
    if options.offload_folder is not None and options.device_map is None:
        raise UsageError("--offload-folder holds weights that --device-map puts on 'disk'; it means nothing without "
                         "--device-map")
    if options.device_map is None:
        return
    if options.offload_folder is not None:
        _check_offload_folder(options.offload_folder)
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise UsageError("--device-map needs accelerate: pip install accelerate")
    values = _device_map_values(options)
    for value in values:
        if isinstance(value, str) and value not in ("disk", "cpu"):
            check_device(value, "--device-map")
        elif isinstance(value, int) and not isinstance(value, bool):
            check_device(f"cuda:{value}", "--device-map")
        elif not isinstance(value, str):
            raise UsageError(f"--device-map: {value!r} is not a device (give 'cpu', 'disk', a GPU index or cuda:N)")
    if "disk" in values and options.offload_folder is None:
        raise UsageError("--device-map puts modules on 'disk': give --offload-folder for their weights")
