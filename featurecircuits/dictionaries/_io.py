"""Reading dictionary files with errors that name the file and the fix (shared by every format loader)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def read_json(path: Path, what: str = "config") -> dict:
    """A JSON object from ``path``; FileNotFoundError / ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the dictionary's {what} file is missing")
    text = path.read_text(errors="replace")
    if not text.strip():
        raise ValueError(f"{path}: the {what} file is empty; re-download or re-save the dictionary")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the {what} file is not valid JSON ({exc}); re-download or re-save the "
                         "dictionary") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the {what} file holds a JSON {type(data).__name__}, expected an object")
    return data


def _check_nonempty(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the dictionary's weight file is missing")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the weight file is empty (an interrupted download or save?); re-download or "
                         "re-save the dictionary")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    _check_nonempty(path)
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError: truncated or not safetensors at all
        raise ValueError(f"{path}: not a readable safetensors file ({exc}); it may be truncated or corrupt — "
                         "re-download or re-save the dictionary") from None


def read_torch(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    _check_nonempty(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors on truncated or corrupt files; unsafe pickles
        raise ValueError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__}: {str(exc)[:200]}); "
                         "it may be truncated or corrupt — re-download or re-save the dictionary") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, found {type(state).__name__}; save the "
                         "dictionary's state_dict()")
    return state


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    _check_nonempty(path)
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: torch.from_numpy(np.ascontiguousarray(data[k])) for k in data.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError on truncated files
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {str(exc)[:200]}); it may be "
                         "truncated or corrupt — re-download the dictionary") from None


def check_finite(tensors: dict[str, torch.Tensor], where: Path | str) -> None:
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{where}: tensor {name!r} holds {bad} NaN/inf value(s); the weights are broken — "
                             "re-download or retrain the dictionary")


def require(tensors: dict[str, torch.Tensor], names, where: Path | str, what: str) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"{where}: a {what} needs tensor(s) {', '.join(missing)}; the file has "
                         f"{', '.join(sorted(tensors)) or 'none'}")


def check_shapes(tensors: dict[str, torch.Tensor], expected: dict[str, tuple], where: Path | str,
                 layout: str) -> None:
    for name, shape in expected.items():
        t = tensors.get(name)
        if t is not None and tuple(t.shape) != tuple(shape):
            raise ValueError(f"{where}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)} "
                             f"({layout})")
