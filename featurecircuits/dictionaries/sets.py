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
from dataclasses import dataclass
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
    from . import gemma_scope, saelens

    if saelens.is_sae_folder(path) or path.name in (saelens.CFG_FILE, saelens.WEIGHTS_FILE):
        ae = saelens.load(path)
    elif path.suffix == ".npz" or (path / gemma_scope.PARAMS_FILE).is_file():
        ae = gemma_scope.load(path)
    else:
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


SPEC_SEPARATOR = "+"
FORMATS = ("dictionary_learning", "saelens", "gemma-scope-res", "gemma-scope-mlp", "gemma-scope-att")


@dataclass(frozen=True)
class SpecPart:
    """One part of a ``--dictionaries`` spec: ``[format:]target[@options]``."""

    format: str | None  # None: a plain folder / known name, format detected
    target: str
    options: dict
    select: str | None  # a bare option: keep only SAE ids / subfolders containing it


def parse_spec(spec: str | Path) -> list[SpecPart]:
    """Split a dictionaries spec into parts.

    Grammar: ``PART ('+' PART)*`` with ``PART = [FORMAT ':'] TARGET ['@' OPTION (',' OPTION)*]``; FORMAT one of
    :data:`FORMATS`; OPTION ``key=value`` (``l0=50``, ``width=16k`` for Gemma Scope) or a bare string that keeps
    only SAE ids / subfolders containing it. A part without a format is a folder or a known name
    (``organism``, a published set, a hub repo id), its format detected from the files.
    """
    if isinstance(spec, Path):
        return [SpecPart(None, str(spec), {}, None)]
    text = str(spec)
    if not any(text.startswith(f + ":") or f"{SPEC_SEPARATOR}{f}:" in text for f in FORMATS):
        return [SpecPart(None, text, {}, None)]
    parts = []
    for chunk in text.split(SPEC_SEPARATOR):
        fmt, sep, rest = chunk.partition(":")
        if not sep or fmt not in FORMATS:
            raise ValueError(f"dictionaries spec part {chunk!r} does not start with a format; write FORMAT:TARGET "
                             f"with FORMAT one of {', '.join(FORMATS)}, parts joined by '{SPEC_SEPARATOR}'")
        target, _, opts = rest.partition("@")
        if not target:
            raise ValueError(f"dictionaries spec part {chunk!r} names no folder or release after '{fmt}:'")
        options, select = {}, None
        for opt in filter(None, opts.split(",")):
            key, eq, value = opt.partition("=")
            if eq:
                if key not in ("l0", "width"):
                    raise ValueError(f"unknown option {key!r} in {chunk!r}; options: l0=<number>, width=<W> "
                                     "(Gemma Scope) or a bare string selecting SAE ids")
                if key == "l0":
                    try:
                        float(value)
                    except ValueError:
                        raise ValueError(f"l0 must be a number in {chunk!r}, got {value!r}") from None
                options[key] = value
            else:
                select = opt
        parts.append(SpecPart(fmt, target, options, select))
    return parts


def _finish(ae: Dictionary, model: Model, name: str, device) -> Dictionary:
    ae.eval().requires_grad_(False)
    ae.to(device=device or model.submodule_device(model.submodule(name)), dtype=model.dtype)
    check_dictionary(ae, model, name)
    return ae


def _hooked(part: SpecPart, model: Model, l0) -> list[tuple[str, Dictionary, str]]:
    """``(hook, dictionary, where)`` for a SAELens or Gemma Scope part."""
    from . import gemma_scope, saelens

    if part.format.startswith("gemma-scope-"):
        suite = part.format.removeprefix("gemma-scope-")
        level = part.options.get("l0", l0)
        found = gemma_scope.load_suite(resolve_dictionaries(part.target), suite, l0=level,
                                       width=part.options.get("width"))
        return [(hook, ae, ae.source.path) for hook, ae in found]
    path = Path(part.target)
    if path.is_dir():
        folders = [path] if saelens.is_sae_folder(path) else sorted(
            p for p in path.rglob(saelens.CFG_FILE) if (p.parent / saelens.WEIGHTS_FILE).is_file())
        folders = [f if f.is_dir() else f.parent for f in folders]
        if part.select:
            folders = [f for f in folders if part.select in str(f.relative_to(path))]
        if not folders:
            raise FileNotFoundError(f"{path}: no SAELens SAE folders ({saelens.CFG_FILE} + {saelens.WEIGHTS_FILE})"
                                    + (f" matching {part.select!r}" if part.select else ""))
        out = []
        for folder in folders:
            ae = saelens.load(folder)
            out.append((ae.hook_name, ae, str(folder)))
        return out
    if Path(part.target).exists() or "/" in part.target and Path(part.target).parent.exists():
        raise FileNotFoundError(f"SAELens folder {part.target} does not exist or is not a folder")
    return [(ae.hook_name, ae, ae.source.path) for ae in saelens.load_release(part.target, select=part.select)]


def _load_part(part: SpecPart, model: Model, l0, device, wanted=None) -> dict[str, Dictionary]:
    from .hooks import submodule_for_hook

    if part.format in (None, "dictionary_learning"):
        return _load_folder(part.target, model, device=device, wanted=wanted)
    out: dict[str, Dictionary] = {}
    origin: dict[str, str] = {}
    for hook, ae, where in _hooked(part, model, l0):
        name = submodule_for_hook(hook, model, hf_hook=getattr(ae, "hf_hook_name", None), where=where)
        if name in out:
            raise ValueError(f"two SAEs map to {name}: {origin[name]} and {where} (hook {hook}); keep one, e.g. "
                             f"select it with {part.format}:{part.target}@<part of its name>")
        log.info("SAE %s (hook %s) → %s", where, hook, name)
        out[name] = _finish(ae, model, name, device)
        origin[name] = where
    return out


def load_dictionaries(
    root, model: Model, *, submodules=None, device=None, l0: float | None = None
) -> dict[str, Dictionary]:
    """Load the dictionaries named by ``root`` for ``submodules`` (default: every one found), checked.

    ``root`` is a folder (dictionary_learning layout, or SAELens SAE folders, detected), ``organism``, a
    published name, a hub repo id, ``neurons``, or a spec with formats (:func:`parse_spec`), e.g.
    ``saelens:<folder>``, ``saelens:<release>``, ``gemma-scope-res:<folder>@l0=50``, several joined by
    ``+``. ``l0``: the Gemma Scope L0 to take where a layer has several (default: closest to 100).
    Returns a dict from our submodule name (``resid_3``) to dictionary, in execution order; submodules
    without a dictionary carry no nodes (a *partial* set), and which do is logged.
    """
    if str(root) == NEURONS:
        return neuron_dictionaries(model, submodules)
    found: dict[str, Dictionary] = {}
    wanted = None if submodules is None else {model.submodule(n).name for n in submodules}
    for part in parse_spec(root):
        for name, ae in _load_part(part, model, l0, device, wanted).items():
            if name in found:
                raise ValueError(f"two dictionaries for {name}: {found[name].source.path} and {ae.source.path}; "
                                 "give each submodule one dictionary")
            found[name] = ae
    if submodules is not None:
        wanted = [model.submodule(n).name for n in submodules]
        missing = [n for n in wanted if n not in found]
        if missing:
            looked = ", ".join(" or ".join(f"{f}/" for f in dict.fromkeys((n, sfc_name(model.submodule(n)))))
                               for n in missing)
            raise FileNotFoundError(f"no dictionary for {', '.join(missing)} in {root} (found: "
                                    f"{', '.join(found) or 'none'}; looked for folders {looked}, or SAEs whose "
                                    "hook maps to them)")
        found = {n: found[n] for n in wanted}
    out = {s.name: found[s.name] for s in model.all_submodules if s.name in found}
    log.info("%s", describe(out, model))
    return out


def describe(dictionaries: dict[str, Dictionary], model: Model) -> str:
    """Which submodules carry dictionaries (and so nodes), and which do not."""
    have = [s.name for s in model.all_submodules if s.name in dictionaries]
    without = [s.name for s in model.submodules if s.name not in dictionaries]  # z_l only when asked for
    text = f"dictionaries on {len(have)} of {len(have) + len(without)} submodules: {', '.join(have) or 'none'}"
    if without:
        text += f"; without (no nodes): {', '.join(without)}"
    return text


def _load_folder(root, model: Model, *, device=None, wanted=None) -> dict[str, Dictionary]:
    """A folder (or known name) in the dictionary_learning layout, or a folder of SAELens SAEs."""
    from . import saelens

    root = resolve_dictionaries(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dictionary root {root} is not a directory")
    children = [p for p in root.iterdir() if p.is_dir()]
    if saelens.is_sae_folder(root) or (children and all(saelens.is_sae_folder(p) for p in children)):
        return _load_part(SpecPart("saelens", str(root), {}, None), model, None, device)
    if any(p.name.startswith("layer_") for p in children) and not any(
            canonical_name(p.name) in {s.name for s in model.all_submodules} for p in children):
        raise ValueError(f"{root} looks like a Gemma Scope suite (layer_N/width_W/average_l0_X/params.npz); name "
                         "the suite: gemma-scope-res:<folder>, gemma-scope-mlp:<folder> or gemma-scope-att:<folder>")
    present = {canonical_name(p.name) for p in children}
    names = [s.name for s in model.all_submodules if s.name in present and (wanted is None or s.name in wanted)]
    if not names and wanted is None:
        valid = ", ".join(s.name for s in model.all_submodules)
        raise FileNotFoundError(f"no dictionary folders under {root} match a submodule ({valid}); for SAELens "
                                "or Gemma Scope files use saelens:<folder> or gemma-scope-<suite>:<folder>")
    out: dict[str, Dictionary] = {}
    for sub in model.select(names):
        folder = _submodule_folder(root, model, sub.name)
        if folder is None:
            continue  # a folder without weights: no dictionary for this submodule
        ae = load_dictionary(folder, device=device or model.submodule_device(sub), dtype=model.dtype)
        check_dictionary(ae, model, sub.name)
        out[sub.name] = ae
    return out


def neuron_dictionaries(model: Model, submodules=None) -> dict[str, Dictionary]:
    """The neuron baseline: an identity dictionary per submodule, so each node is one dimension of the
    submodule's output and the error term is zero (the Sparse Feature Circuits neuron circuits)."""
    out = {}
    for s in model.select(submodules):
        d = IdentityDictionary(model.width(s)).to(device=model.submodule_device(s), dtype=model.dtype)
        out[s.name] = d.with_source(NEURONS, "")
    return out


def check_dictionary(ae: Dictionary, model: Model, submodule: str) -> None:
    """Raise a clear error when a dictionary cannot be spliced into ``submodule`` of ``model``."""
    if not isinstance(ae, Dictionary):
        raise ValueError(f"dictionary for {submodule} is a {type(ae).__name__}, not a featurecircuits "
                         "Dictionary; load it with load_dictionary or a format loader")
    width = model.width(submodule)
    if ae.d_in != width:
        what = "attention width (heads × head dimension)" if model.submodule(submodule).kind == "z" else "width"
        raise ValueError(f"dictionary for {submodule} ({ae.source.path or ae.source.format}) reads activations "
                         f"of width {ae.d_in}, but the model's {what} is {width}; use dictionaries trained on this "
                         "model (check --model and --dictionaries)")
    p = ae.decoder_rows
    if p.dtype != model.dtype:
        raise ValueError(f"dictionary for {submodule} is {p.dtype} but the model is {model.dtype}")
    where = model.submodule_device(model.submodule(submodule))
    if p.device != where:
        raise ValueError(f"dictionary for {submodule} is on {p.device} but the submodule runs on {where}")


def save_dictionary(ae, folder: str | Path, *, trainer_config: dict | None = None) -> Path:
    """Write ``ae.pt`` + ``config.json`` in the dictionary_learning layout (atomically)."""
    return dictionary_learning.save(ae, folder, trainer_config=trainer_config)


# The published Sparse Feature Circuits dictionaries for Pythia-70M-deduped (embed + attn/mlp/resid × 6,
# 32768 features each, run "10_32768"), as one zip in a Hugging Face hub repo.
PUBLISHED = PUBLISHED_DICTIONARIES


def cache_dir() -> Path:
    """Where downloads go: ``$FEATURECIRCUITS_CACHE``, else ``$XDG_CACHE_HOME/featurecircuits``, else
    ``~/.cache/featurecircuits`` — never the current directory or the installed package."""
    explicit = os.environ.get("FEATURECIRCUITS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "featurecircuits"


def download_dictionaries(name_or_repo: str = "pythia-70m-deduped", out_dir: str | Path | None = None,
                          *, filename: str | None = None) -> Path:
    """Download published dictionaries into ``out_dir`` (default ``<cache_dir()>/dictionaries``) and return
    the root to pass to :func:`load_dictionaries` (``…/dictionaries/pythia-70m-deduped`` for the SFC set).

    ``name_or_repo`` is a known name (``pythia-70m-deduped``) or a hub repo id; a zip is unpacked
    (checking every member stays inside ``out_dir``), a repo of folders is fetched as a snapshot.
    """
    import zipfile

    from huggingface_hub import hf_hub_download, snapshot_download

    out = Path(out_dir) if out_dir is not None else cache_dir() / "dictionaries"
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
    """A local folder as is; ``organism`` (shipped with the package); a published name or hub repo id →
    downloaded once into :func:`cache_dir` (a copy already in the repository's ``dictionaries/`` is used)."""
    from ..models import REPO_ROOT

    if str(spec) == ORGANISM:
        return REPO_ROOT / "dictionaries" / ORGANISM
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if str(spec) in PUBLISHED:
        for local in (REPO_ROOT / "dictionaries" / str(spec), cache_dir() / "dictionaries" / str(spec)):
            if local.is_dir():
                return local
        return download_dictionaries(str(spec))
    if "/" in str(spec) and not path.exists() and len(path.parts) == 2 and not str(spec).startswith((".", "~")):
        cached = cache_dir() / "dictionaries" / str(spec).replace("/", "__")
        return cached if cached.is_dir() else download_dictionaries(str(spec))
    raise FileNotFoundError(f"dictionaries {spec!r}: not a folder, 'organism', a published name "
                            f"({', '.join(PUBLISHED)}), a hub repo id, or FORMAT:TARGET with FORMAT one of "
                            f"{', '.join(FORMATS)}")
