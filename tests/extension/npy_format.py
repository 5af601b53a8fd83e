"""A dictionary format added from outside the package: one folder per submodule holding ``W_enc.npy``,
``b_enc.npy``, ``W_dec.npy``, ``b_dec.npy`` (a ReLU SAE) and ``meta.json`` naming the submodule. With its
entry in ``featurecircuits.dictionaries.formats.FORMATS`` it loads from a ``npy:<folder>`` spec (or an
unprefixed folder, detected), records that spec in circuits, and gives the planner its widths."""

import json
from pathlib import Path

import numpy as np
import torch

from featurecircuits.dictionaries.base import SAE

FORMAT = "npy"
FILES = ("W_enc.npy", "b_enc.npy", "W_dec.npy", "b_dec.npy", "meta.json")


def save(ae, folder, submodule: str) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, t in (("W_enc", ae.W_enc), ("b_enc", ae.b_enc), ("W_dec", ae.W_dec), ("b_dec", ae.b_dec)):
        np.save(folder / f"{name}.npy", t.detach().cpu().numpy())
    (folder / "meta.json").write_text(json.dumps({"submodule": submodule}))


def detect(path) -> bool:
    return all((Path(path) / f).is_file() for f in FILES)


def detect_set(root) -> bool:
    children = [p for p in Path(root).iterdir() if p.is_dir()]
    return bool(children) and all(detect(p) for p in children)


def load(path):
    path = Path(path)
    t = {name: torch.from_numpy(np.load(path / f"{name}.npy")) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    return SAE(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"]).with_source(FORMAT, str(path))


def _folders(part):
    root = Path(part.target)
    return [(json.loads((p / "meta.json").read_text())["submodule"], p) for p in sorted(root.iterdir()) if detect(p)]


def load_set(part, model, *, l0=None, wanted=None):
    return [(name, load(p), str(p)) for name, p in _folders(part) if wanted is None or name in wanted]


def widths(part):
    out = {}
    for name, p in _folders(part):
        d_in, width = np.load(p / "W_enc.npy", mmap_mode="r").shape[::-1]
        out[name] = (int(width), int(d_in))
    return out
