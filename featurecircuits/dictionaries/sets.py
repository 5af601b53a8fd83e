"""Load sparse autoencoders in the dictionary_learning format and check them against a model.

Layout: ``<root>/<submodule>/<id>_<size>/ae.pt`` (or ``ae.safetensors``) with ``config.json`` beside it,
where ``<submodule>`` is ours (``attn_3``) or the Sparse Feature Circuits name (``attn_out_layer3``).
The weights are loaded with ``weights_only`` and exactly as stored: unlike
``AutoEncoder.from_pretrained`` we never renormalise decoder columns, because that rescales every
feature's activation and so every threshold. Decoder norms are measured and logged instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .fileio import atomic_write_bytes, atomic_write_text
from .models import Model, canonical_name, sfc_name

log = logging.getLogger(__name__)

WEIGHT_FILES = ("ae.pt", "ae.safetensors")


def _classes() -> dict[str, type]:
    from dictionary_learning.dictionary import (
        AutoEncoder,
        AutoEncoderNew,
        GatedAutoEncoder,
        IdentityDict,
        JumpReluAutoEncoder,
    )
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    return {
        c.__name__: c
        for c in (AutoEncoder, AutoEncoderNew, GatedAutoEncoder, JumpReluAutoEncoder, AutoEncoderTopK,
                  BatchTopKSAE, IdentityDict)
    }


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


def _shape(cls_name: str, state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(activation_dim, dict_size) from the weights."""
    if cls_name == "JumpReluAutoEncoder":
        return tuple(state["W_enc"].shape)
    dict_size, activation_dim = state["encoder.weight"].shape
    return activation_dim, dict_size


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def find_weights(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no dictionary weights ({' or '.join(WEIGHT_FILES)}) in {folder}")


def load_dictionary(path: str | Path, *, device=None, dtype: torch.dtype | None = None) -> nn.Module:
    """Load one dictionary from its folder (or its weight file) without changing its weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dictionary path {path} does not exist")
    weights = path if path.is_file() else find_weights(path)
    config_path = weights.parent / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    trainer = config.get("trainer", {})
    state = _read_state(weights)
    cls_name = trainer.get("dict_class") or _infer_class(state)
    classes = _classes()
    if cls_name not in classes:
        raise ValueError(f"{weights}: unknown dict_class {cls_name!r}; supported: {', '.join(classes)}")
    activation_dim, dict_size = _shape(cls_name, state)
    cls = classes[cls_name]
    if cls_name in ("AutoEncoderTopK", "BatchTopKSAE"):
        ae = cls(activation_dim, dict_size, int(state["k"]))
    else:
        ae = cls(activation_dim, dict_size)
    if cls_name == "JumpReluAutoEncoder":
        ae.apply_b_dec_to_input = bool(trainer.get("apply_b_dec_to_input", False))
    missing, unexpected = ae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not fit {cls_name} (missing {missing}, unexpected {unexpected})")
    ae.activation_dim, ae.dict_size = activation_dim, dict_size
    ae.eval().requires_grad_(False)
    if device is not None or dtype is not None:
        ae.to(device=device, dtype=dtype)
    norms = decoder_norms(ae)
    log.info(
        "%s: %s %d→%d, decoder column norms %.3f–%.3f (kept as stored)",
        weights, cls_name, activation_dim, dict_size, norms.min(), norms.max(),
    )
    return ae


def decoder_norms(ae: nn.Module) -> torch.Tensor:
    """Norm of each feature's decoder direction (1.0 everywhere for a unit-norm dictionary)."""
    if hasattr(ae, "W_dec"):
        return ae.W_dec.detach().norm(dim=1)
    return ae.decoder.weight.detach().norm(dim=0)


def _submodule_folder(root: Path, model: Model, name: str) -> Path | None:
    sub = model.submodule(name)
    for candidate in (sub.name, sfc_name(sub)):
        folder = root / candidate
        if folder.is_dir():
            if any((folder / w).is_file() for w in WEIGHT_FILES):
                return folder
            children = sorted(p for p in folder.iterdir() if p.is_dir() and
                              any((p / w).is_file() for w in WEIGHT_FILES))
            if len(children) == 1:
                return children[0]
            if len(children) > 1:
                raise ValueError(
                    f"{folder} holds several dictionaries ({', '.join(c.name for c in children)}); "
                    "pass the one you want as its own root"
                )
    return None


def load_dictionaries(
    root: str | Path, model: Model, *, submodules=None, device=None
) -> dict[str, nn.Module]:
    """Load the dictionaries under ``root`` for ``submodules`` (default: every one found), checked.

    Returns a dict from our submodule name (``resid_3``) to dictionary, in execution order.
    """
    if str(root) == "neurons":
        return neuron_dictionaries(model, submodules)
    root = resolve_dictionaries(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dictionary root {root} is not a directory")
    if submodules is not None:
        names = [model.submodule(n).name for n in submodules]
    else:
        present = {canonical_name(p.name) for p in root.iterdir() if p.is_dir()}
        names = [s.name for s in model.submodules if s.name in present]
        if not names:
            valid = ", ".join(s.name for s in model.submodules)
            raise FileNotFoundError(f"no dictionary folders under {root} match a submodule ({valid})")
    out: dict[str, nn.Module] = {}
    for sub in model.select(names):
        folder = _submodule_folder(root, model, sub.name)
        if folder is None:
            raise FileNotFoundError(f"no dictionary for {sub.name} under {root} "
                                    f"(looked for {sub.name}/ and {sfc_name(sub)}/)")
        ae = load_dictionary(folder, device=device or model.device, dtype=model.dtype)
        check_dictionary(ae, model, sub.name)
        out[sub.name] = ae
    return out


def neuron_dictionaries(model: Model, submodules=None) -> dict[str, nn.Module]:
    """The neuron baseline: an identity dictionary per submodule, so each node is one dimension of the
    submodule's output and the error term is zero (the Sparse Feature Circuits neuron circuits)."""
    from dictionary_learning.dictionary import IdentityDict

    return {s.name: IdentityDict(model.d_model) for s in model.select(submodules)}


def check_dictionary(ae: nn.Module, model: Model, submodule: str) -> None:
    """Raise a clear error when a dictionary cannot be spliced into ``submodule`` of ``model``."""
    width = model.d_model
    dim = getattr(ae, "activation_dim", None)
    if dim is not None and dim != width:
        raise ValueError(f"dictionary for {submodule} reads activations of width {dim}, but the model's "
                         f"width is {width}")
    p = next(ae.parameters())
    if p.dtype != model.dtype:
        raise ValueError(f"dictionary for {submodule} is {p.dtype} but the model is {model.dtype}")
    if p.device != model.device:
        raise ValueError(f"dictionary for {submodule} is on {p.device} but the model is on {model.device}")


def save_dictionary(ae: nn.Module, folder: str | Path, *, trainer_config: dict | None = None) -> Path:
    """Write ``ae.pt`` + ``config.json`` in the dictionary_learning layout (atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"trainer": {"dict_class": type(ae).__name__, "activation_dim": int(ae.activation_dim),
                          "dict_size": int(ae.dict_size), **(trainer_config or {})}}
    atomic_write_bytes(folder / "ae.pt", lambda f: torch.save(ae.state_dict(), f))
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2))
    return folder


# The published Sparse Feature Circuits dictionaries for Pythia-70M-deduped (embed + attn/mlp/resid × 6,
# 32768 features each, run "10_32768"), as one zip in a Hugging Face hub repo.
PUBLISHED = {
    "pythia-70m-deduped": ("saprmarks/pythia-70m-deduped-saes", "dictionaries_pythia-70m-deduped_10.zip"),
}


def download_dictionaries(name_or_repo: str = "pythia-70m-deduped", out_dir: str | Path | None = None,
                          *, filename: str | None = None) -> Path:
    """Download published dictionaries into ``out_dir`` (default ``<repo>/dictionaries``) and return the
    root to pass to :func:`load_dictionaries` (``dictionaries/pythia-70m-deduped`` for the SFC set).

    ``name_or_repo`` is a known name (``pythia-70m-deduped``) or a hub repo id; a zip is unpacked
    (checking every member stays inside ``out_dir``), a repo of folders is fetched as a snapshot.
    """
    import zipfile

    from huggingface_hub import hf_hub_download, snapshot_download

    from .models import REPO_ROOT

    out = Path(out_dir) if out_dir is not None else REPO_ROOT / "dictionaries"
    repo, default_file = PUBLISHED.get(name_or_repo, (name_or_repo, None))
    filename = filename or default_file
    out.mkdir(parents=True, exist_ok=True)
    if filename is None:
        target = out / repo.replace("/", "__")
        return Path(snapshot_download(repo_id=repo, local_dir=target, allow_patterns=["*.pt", "*.json",
                                                                                    "*.safetensors"]))
    archive = Path(hf_hub_download(repo_id=repo, filename=filename))
    with zipfile.ZipFile(archive) as zf:
        root_dirs = set()
        for member in zf.namelist():
            dest = (out / member).resolve()
            if not dest.is_relative_to(out.resolve()):
                raise ValueError(f"{archive.name}: member {member!r} would be written outside {out}")
            parts = Path(member).parts
            if len(parts) > 1 and parts[0] == "dictionaries":
                parts = parts[1:]
            if parts:
                root_dirs.add(parts[0])
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".download-"))
        try:
            zf.extractall(staging)
            inner = staging / "dictionaries" if (staging / "dictionaries").is_dir() else staging
            for child in inner.iterdir():
                dest = out / child.name
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(child, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    roots = [out / d for d in sorted(root_dirs) if (out / d).is_dir()]
    log.info("dictionaries unpacked under %s", ", ".join(map(str, roots)))
    return roots[0] if len(roots) == 1 else out


def resolve_dictionaries(spec: str | Path) -> Path:
    """A local folder as is; ``organism``; a published name or hub repo id → downloaded (once)."""
    from .models import REPO_ROOT

    if str(spec) == "organism":
        return REPO_ROOT / "dictionaries" / "organism"
    path = Path(spec)
    if path.is_dir():
        return path
    if str(spec) in PUBLISHED:
        local = REPO_ROOT / "dictionaries" / str(spec)
        return local if local.is_dir() else download_dictionaries(str(spec))
    if "/" in str(spec) and not path.exists() and len(path.parts) == 2:
        return download_dictionaries(str(spec))
    raise FileNotFoundError(f"dictionaries {spec!r}: not a folder, 'organism', a published name "
                            f"({', '.join(PUBLISHED)}) or a hub repo id")
