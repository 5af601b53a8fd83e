"""Dictionary sets: one dictionary per submodule, found under a root folder (or built in memory), checked
against the model.

Layout of a dictionary_learning root: ``<root>/<submodule>/<id>_<size>/ae.pt`` (or ``ae.safetensors``) with
``config.json`` beside it, where ``<submodule>`` is ours (``attn_3``) or the Sparse Feature Circuits name
(``attn_out_layer3``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..models import Model, canonical_name, sfc_name
from ..registry import NEURONS, ORGANISM, PUBLISHED_DICTIONARIES
from . import dictionary_learning
from .base import Dictionary, IdentityDictionary

log = logging.getLogger(__name__)

WEIGHT_FILES = dictionary_learning.WEIGHT_FILES


def load_dictionary(path: str | Path, *, device=None, dtype: torch.dtype | None = None) -> Dictionary:
    """Load one dictionary from its folder (or its weight file) without changing its weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dictionary path {path} does not exist")
    ae = dictionary_learning.load(path)
    ae.eval().requires_grad_(False)
    if device is not None or dtype is not None:
        ae.to(device=device, dtype=dtype)
    norms = decoder_norms(ae)
    log.info("%s: %s %d→%d, decoder norms %.3f–%.3f (kept as stored)", ae.source.path, ae.activation, ae.d_in,
             ae.width, norms.min(), norms.max())
    return ae


def decoder_norms(ae: Dictionary) -> torch.Tensor:
    """Norm of each feature's decoder direction (1.0 everywhere for a unit-norm dictionary)."""
    return ae.decoder_rows.norm(dim=1)


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
) -> dict[str, Dictionary]:
    """Load the dictionaries under ``root`` for ``submodules`` (default: every one found), checked.

    Returns a dict from our submodule name (``resid_3``) to dictionary, in execution order.
    """
    if str(root) == NEURONS:
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
    out: dict[str, Dictionary] = {}
    for sub in model.select(names):
        folder = _submodule_folder(root, model, sub.name)
        if folder is None:
            raise FileNotFoundError(f"no dictionary for {sub.name} under {root} "
                                    f"(looked for {sub.name}/ and {sfc_name(sub)}/)")
        ae = load_dictionary(folder, device=device or model.device, dtype=model.dtype)
        check_dictionary(ae, model, sub.name)
        out[sub.name] = ae
    return out


def neuron_dictionaries(model: Model, submodules=None) -> dict[str, Dictionary]:
    """The neuron baseline: an identity dictionary per submodule, so each node is one dimension of the
    submodule's output and the error term is zero (the Sparse Feature Circuits neuron circuits)."""
    out = {}
    for s in model.select(submodules):
        d = IdentityDictionary(model.d_model).to(device=model.device, dtype=model.dtype)
        out[s.name] = d.with_source(NEURONS, "")
    return out


def check_dictionary(ae: Dictionary, model: Model, submodule: str) -> None:
    """Raise a clear error when a dictionary cannot be spliced into ``submodule`` of ``model``."""
    if not isinstance(ae, Dictionary):
        raise ValueError(f"dictionary for {submodule} is a {type(ae).__name__}, not a featurecircuits "
                         "Dictionary; load it with load_dictionary or a format loader")
    width = model.d_model
    if ae.d_in != width:
        raise ValueError(f"dictionary for {submodule} ({ae.source.path or ae.source.format}) reads activations "
                         f"of width {ae.d_in}, but the model's width is {width}")
    p = ae.decoder_rows
    if p.dtype != model.dtype:
        raise ValueError(f"dictionary for {submodule} is {p.dtype} but the model is {model.dtype}")
    if p.device != model.device:
        raise ValueError(f"dictionary for {submodule} is on {p.device} but the model is on {model.device}")


def save_dictionary(ae, folder: str | Path, *, trainer_config: dict | None = None) -> Path:
    """Write ``ae.pt`` + ``config.json`` in the dictionary_learning layout (atomically)."""
    return dictionary_learning.save(ae, folder, trainer_config=trainer_config)


# The published Sparse Feature Circuits dictionaries for Pythia-70M-deduped (embed + attn/mlp/resid × 6,
# 32768 features each, run "10_32768"), as one zip in a Hugging Face hub repo.
PUBLISHED = PUBLISHED_DICTIONARIES


def download_dictionaries(name_or_repo: str = "pythia-70m-deduped", out_dir: str | Path | None = None,
                          *, filename: str | None = None) -> Path:
    """Download published dictionaries into ``out_dir`` (default ``<repo>/dictionaries``) and return the
    root to pass to :func:`load_dictionaries` (``dictionaries/pythia-70m-deduped`` for the SFC set).

    ``name_or_repo`` is a known name (``pythia-70m-deduped``) or a hub repo id; a zip is unpacked
    (checking every member stays inside ``out_dir``), a repo of folders is fetched as a snapshot.
    """
    import zipfile

    from huggingface_hub import hf_hub_download, snapshot_download

    from ..models import REPO_ROOT

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
    from ..models import REPO_ROOT

    if str(spec) == ORGANISM:
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
