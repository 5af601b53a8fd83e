"""The dictionary_learning format: ``ae.pt`` (or ``ae.safetensors``) with ``config.json`` beside it.

Read without the dictionary_learning package (it pins an old nnsight): each class's state dict is
converted to our :class:`SAE`/:class:`GatedSAE` with the same arithmetic. Weights are kept exactly as
stored: unlike ``AutoEncoder.from_pretrained`` we never renormalise decoder columns, because that rescales
every feature's activation and so every threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..fileio import atomic_write_bytes, atomic_write_text
from . import _io
from .base import SAE, Dictionary, GatedSAE, IdentityDictionary

FORMAT = "dictionary_learning"
WEIGHT_FILES = ("ae.pt", "ae.safetensors")


def _infer_class(state: dict[str, torch.Tensor]) -> str:
    keys = set(state)
    if {"W_enc", "W_dec", "threshold"} <= keys:
        return "JumpReluAutoEncoder"
    if {"r_mag", "gate_bias", "mag_bias"} <= keys:
        return "GatedAutoEncoder"
    if "k" in keys:
        return "AutoEncoderTopK"
    if {"encoder.weight", "decoder.weight", "bias"} <= keys:
        return "AutoEncoder"
    if {"encoder.weight", "decoder.bias"} <= keys:
        return "AutoEncoderNew"
    raise ValueError(f"cannot tell the dictionary class from its weights (keys: {sorted(keys)})")


def _from_state(cls_name: str, s: dict[str, torch.Tensor], trainer: dict) -> Dictionary:
    if cls_name == "AutoEncoder":
        return SAE(s["encoder.weight"], s["encoder.bias"], s["decoder.weight"], s["bias"], b_pre=s["bias"])
    if cls_name == "AutoEncoderNew":
        return SAE(s["encoder.weight"], s["encoder.bias"], s["decoder.weight"], s["decoder.bias"])
    if cls_name == "JumpReluAutoEncoder":
        b_pre = s["b_dec"] if trainer.get("apply_b_dec_to_input", False) else None
        return SAE(s["W_enc"].t(), s["b_enc"], s["W_dec"].t(), s["b_dec"], b_pre=b_pre, activation="jumprelu",
                   threshold=s["threshold"])
    if cls_name == "AutoEncoderTopK":
        return SAE(s["encoder.weight"], s["encoder.bias"], s["decoder.weight"], s["b_dec"], b_pre=s["b_dec"],
                   activation="topk", k=int(s["k"]))
    if cls_name == "BatchTopKSAE":  # at inference it thresholds the ReLU output (its default encode)
        thr = s["threshold"].clamp(min=0).expand(s["encoder.bias"].shape[0])
        return SAE(s["encoder.weight"], s["encoder.bias"], s["decoder.weight"], s["b_dec"], b_pre=s["b_dec"],
                   activation="jumprelu", threshold=thr)
    if cls_name == "GatedAutoEncoder":
        return GatedSAE(s["encoder.weight"], s["gate_bias"], s["mag_bias"], s["r_mag"], s["decoder.weight"],
                        s["decoder_bias"], b_pre=s["decoder_bias"])
    if cls_name == "IdentityDict":
        return IdentityDictionary(int(trainer["activation_dim"]))
    raise ValueError(f"unknown dict_class {cls_name!r}; supported: {', '.join(CLASSES)}")


CLASSES = ("AutoEncoder", "AutoEncoderNew", "JumpReluAutoEncoder", "AutoEncoderTopK", "BatchTopKSAE",
           "GatedAutoEncoder", "IdentityDict")


def convert(module) -> Dictionary:
    """A dictionary_learning object (``AutoEncoder``, ``JumpReluAutoEncoder``, …) in memory, converted."""
    cls_name = type(module).__name__
    trainer = {"apply_b_dec_to_input": bool(getattr(module, "apply_b_dec_to_input", False)),
               "activation_dim": getattr(module, "activation_dim", None)}
    state = {k: v.detach() for k, v in module.state_dict().items()}
    return _from_state(cls_name, state, trainer).with_source(FORMAT, "")


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of ``ae.pt``/``ae.safetensors``; clear errors for empty, truncated or corrupt files."""
    path = Path(path)
    return _io.read_safetensors(path) if path.suffix == ".safetensors" else _io.read_torch(path)


def find_weights(folder: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def load(path: str | Path) -> Dictionary:
    """One dictionary from its folder or weight file, converted to our interface, source recorded."""
    path = Path(path)
    weights = path if path.is_file() else find_weights(path)
    if weights is None:
        raise FileNotFoundError(f"no dictionary weights ({' or '.join(WEIGHT_FILES)}) in {path}")
    config_path = weights.parent / "config.json"
    config = _io.read_json(config_path, "config.json") if config_path.is_file() else {}
    trainer = config.get("trainer", {})
    if not isinstance(trainer, dict):
        raise ValueError(f"{config_path}: 'trainer' should be an object with dict_class, activation_dim, "
                         f"dict_size; found {type(trainer).__name__}")
    state = read_state(weights)
    _io.check_finite(state, weights)
    try:
        cls_name = trainer.get("dict_class") or _infer_class(state)
    except ValueError as exc:
        raise ValueError(f"{weights}: {exc}; name it in config.json (trainer.dict_class)") from None
    try:
        ae = _from_state(cls_name, state, trainer)
    except KeyError as exc:
        raise ValueError(f"{weights}: weights do not fit {cls_name} (missing {exc}); check trainer.dict_class in "
                         f"{config_path}") from None
    except ValueError as exc:
        if "unknown dict_class" in str(exc):
            raise ValueError(f"{config_path}: {exc}") from None
        raise ValueError(f"{weights}: {exc}") from None
    for key in ("activation_dim", "dict_size"):
        want = trainer.get(key)
        have = ae.d_in if key == "activation_dim" else ae.width
        if want is not None and int(want) != have:
            raise ValueError(f"{config_path}: trainer.{key} is {want} but the weights in {weights.name} have "
                             f"{have}; the config and the weights do not belong together")
    return ae.with_source(FORMAT, str(weights.parent))


def state_dict(ae: Dictionary) -> tuple[str, dict[str, torch.Tensor]]:
    """(dict_class, state dict) in dictionary_learning's layout, for an SAE that one of its classes holds."""
    if isinstance(ae, SAE) and ae.activation == "relu" and ae.b_pre is not None and ae.b_dec is not None \
            and torch.equal(ae.b_pre, ae.b_dec):
        return "AutoEncoder", {"bias": ae.b_dec.detach(), "encoder.weight": ae.W_enc.detach(),
                               "encoder.bias": ae.b_enc.detach(), "decoder.weight": ae.W_dec.detach()}
    if isinstance(ae, SAE) and ae.activation == "jumprelu" and ae.threshold is not None:
        return "JumpReluAutoEncoder", {"W_enc": ae.W_enc.detach().t().contiguous(), "b_enc": ae.b_enc.detach(),
                                       "W_dec": ae.W_dec.detach().t().contiguous(),
                                       "b_dec": ae.b_dec.detach(), "threshold": ae.threshold.detach().expand(ae.width)}
    raise ValueError(f"cannot write a {type(ae).__name__} ({ae.activation}) in the dictionary_learning format")


def save(ae, folder: str | Path, *, trainer_config: dict | None = None) -> Path:
    """Write ``ae.pt`` + ``config.json`` in the dictionary_learning layout (atomically). ``ae`` is one of
    our dictionaries or a dictionary_learning module (``state_dict`` and ``activation_dim``/``dict_size``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(ae, Dictionary):
        cls_name, state = state_dict(ae)
        d_in, width = ae.d_in, ae.width
    else:
        cls_name, state = type(ae).__name__, ae.state_dict()
        d_in, width = int(ae.activation_dim), int(ae.dict_size)
    config = {"trainer": {"dict_class": cls_name, "activation_dim": d_in, "dict_size": width,
                          **(trainer_config or {})}}
    if cls_name == "JumpReluAutoEncoder":
        config["trainer"]["apply_b_dec_to_input"] = bool(getattr(ae, "b_pre", None) is not None)
    atomic_write_bytes(folder / "ae.pt", lambda f: torch.save({k: v.contiguous() for k, v in state.items()}, f))
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2))
    return folder


# -- the format protocol (featurecircuits.dictionaries.formats) ------------------------------------------------
def detect(path: Path) -> bool:
    path = Path(path)
    return path.name in WEIGHT_FILES or (path.is_dir() and find_weights(path) is not None)


def detect_set(root: Path) -> bool:
    return Path(root).is_dir()  # the fallback layout: any folder no other format claims


def _submodule_folder(root: Path, candidates: list[str]) -> Path | None:
    """The folder holding the weights of one submodule (named ours, or as Sparse Feature Circuits names it)."""
    for candidate in candidates:
        folder = root / candidate
        if not folder.is_dir():
            continue
        if find_weights(folder) is not None:
            return folder
        children = sorted(p for p in folder.iterdir() if p.is_dir() and find_weights(p) is not None)
        if len(children) > 1:
            raise ValueError(f"{folder} holds several dictionaries ({', '.join(c.name for c in children)}); "
                             "pass the one you want as its own root")
        if children:
            return children[0]
    return None


def load_set(part, model, *, l0=None, wanted=None) -> list[tuple[str, Dictionary, str]]:
    """``<root>/<submodule>/<run>/ae.pt`` for every submodule with a folder (``wanted``: only those)."""
    from ..models import canonical_name, sfc_name
    from .hub import resolve_dictionaries

    root = resolve_dictionaries(part.target)
    if not root.is_dir():
        raise FileNotFoundError(f"dictionary root {root} is not a directory")
    names = {s.name for s in model.all_submodules}
    for entry in root.iterdir():
        if canonical_name(entry.name) in names and entry.is_symlink() and not entry.exists():
            raise FileNotFoundError(f"{entry}: the dictionary folder of {canonical_name(entry.name)} is a symlink that "
                                    "cannot be followed (a loop, or its target is missing)")
    present = {canonical_name(p.name) for p in root.iterdir() if p.is_dir()}
    subs = [s for s in model.all_submodules if s.name in present and (wanted is None or s.name in wanted)]
    if not subs and wanted is None:
        valid = ", ".join(s.name for s in model.all_submodules)
        raise FileNotFoundError(f"no dictionary folders under {root} match a submodule ({valid}); for SAELens "
                                "or Gemma Scope files use saelens:<folder> or gemma-scope-<suite>:<folder>")
    out = []
    for sub in subs:
        folder = _submodule_folder(root, list(dict.fromkeys([sub.name, sfc_name(sub)])))
        if folder is not None:  # a folder without weights: no dictionary for this submodule
            out.append((sub.name, load(folder), str(folder)))
    return out


def widths(part) -> dict[str, tuple[int, int]]:
    """(width, d_in) per submodule from the ``config.json`` files (``trainer.dict_size``/``activation_dim``)."""
    from ..models import canonical_name
    from .hub import resolve_dictionaries

    root = resolve_dictionaries(part.target)
    out: dict[str, tuple[int, int]] = {}
    for cfg in sorted(root.rglob("config.json")):
        trainer = _io.read_json(cfg, "config.json").get("trainer", {})
        width, d_in = trainer.get("dict_size"), trainer.get("activation_dim")
        if not width or not d_in:
            continue
        name = canonical_name(cfg.relative_to(root).parts[0])
        if name in out:
            raise ValueError(f"{root} holds several dictionaries for {name}; pass the one you want as its own root")
        out[name] = (int(width), int(d_in))
    return out
