"""Dictionary sets: one dictionary per submodule, loaded from a spec (:mod:`.spec`) through the format table
(:mod:`.formats`), placed with their submodule and checked against the model."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from ..models import Model, sfc_name
from ..registry import NEURONS
from . import dictionary_learning
from .base import Dictionary, IdentityDictionary
from .formats import FALLBACK, detection_order, loader
from .hub import resolve_dictionaries
from .spec import SpecPart, parse_spec

log = logging.getLogger(__name__)


def load_dictionary(path: str | Path, *, device=None, dtype: torch.dtype | None = None) -> Dictionary:
    """Load one dictionary from its folder (or its weight file), format detected, weights unchanged."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dictionary path {path} does not exist")
    fmt = next((f.name for f in detection_order() if f.name != FALLBACK and loader(f.name).detect(path)), FALLBACK)
    ae = loader(fmt).load(path)
    ae.eval().requires_grad_(False)
    if device is not None or dtype is not None:
        ae.to(device=device, dtype=dtype)
    _log_norms(ae)
    return ae


def _log_norms(ae: Dictionary) -> None:
    if log.isEnabledFor(logging.INFO):
        norms = decoder_norms(ae)
        log.info("%s: %s %d→%d, decoder norms %.3f–%.3f (kept as stored)", ae.source.path, ae.activation, ae.d_in,
                 ae.width, norms.min(), norms.max())


def decoder_norms(ae: Dictionary) -> torch.Tensor:
    """Norm of each feature's decoder direction (1.0 everywhere for a unit-norm dictionary)."""
    return ae.decoder_rows.norm(dim=1)


def resolve_part(part: SpecPart) -> tuple[str, SpecPart]:
    """(format, part to load): an unprefixed part's target resolved (a known name downloaded once) and its
    format detected from the files."""
    if part.prefix:
        return part.format, part
    root = resolve_dictionaries(part.target)
    for info in detection_order():
        if info.name != FALLBACK and loader(info.name).detect_set(root):
            return info.name, SpecPart(None, str(root), part.options, part.select)
    return FALLBACK, SpecPart(None, str(root), part.options, part.select)


def _finish(ae: Dictionary, model: Model, name: str, device, spec: str) -> Dictionary:
    ae.eval().requires_grad_(False)
    ae.to(device=device or model.submodule_device(model.submodule(name)), dtype=model.dtype)
    check_dictionary(ae, model, name)
    ae.source = replace(ae.source, spec=spec)
    _log_norms(ae)
    return ae


def load_dictionaries(
    root, model: Model, *, submodules=None, device=None, l0: float | None = None
) -> dict[str, Dictionary]:
    """Load the dictionaries named by ``root`` for ``submodules`` (default: every one found), checked.

    ``root`` is a spec (:func:`featurecircuits.dictionaries.spec.parse_spec`): a folder (format detected),
    ``organism``, a published name, a hub repo id, ``neurons``, or parts with a format prefix such as
    ``saelens:<folder-or-release>``, ``gemma-scope-res:<folder>@l0=50``, joined by ``+``. ``l0``: the Gemma
    Scope L0 to take where a layer has several (default: closest to 100). Returns a dict from our submodule
    name (``resid_3``) to dictionary, in execution order; each records the canonical spec part that loaded
    it (``source.spec``). Submodules without a dictionary carry no nodes (a *partial* set).
    """
    if str(root) == NEURONS:
        return neuron_dictionaries(model, submodules)
    found: dict[str, Dictionary] = {}
    wanted = None if submodules is None else {model.submodule(n).name for n in submodules}
    for part in parse_spec(root):
        fmt, resolved = resolve_part(part)
        spec = part.canonical().text()
        for name, ae, where in loader(fmt).load_set(resolved, model, l0=l0, wanted=wanted):
            if name in found:
                raise ValueError(f"two dictionaries for {name}: {found[name].source.path} and {where}; "
                                 "give each submodule one dictionary")
            found[name] = _finish(ae, model, name, device, spec)
    if submodules is not None:
        names = [model.submodule(n).name for n in submodules]
        missing = [n for n in names if n not in found]
        if missing:
            looked = ", ".join(" or ".join(f"{f}/" for f in dict.fromkeys((n, sfc_name(model.submodule(n)))))
                               for n in missing)
            raise FileNotFoundError(f"no dictionary for {', '.join(missing)} in {root} (found: "
                                    f"{', '.join(found) or 'none'}; looked for folders {looked}, or SAEs whose "
                                    "hook maps to them)")
    out = {s.name: found[s.name] for s in model.all_submodules if s.name in found}
    partial = submodules is None and any(s.name not in out for s in model.submodules)
    (log.warning if partial else log.info)("%s", describe(out, model))
    return out


def dictionary_widths(spec) -> dict[str, tuple[int, int]]:
    """(width, d_in) per submodule of a spec's dictionaries, from their configs or headers alone (no weights
    read): what the memory planner needs."""
    out: dict[str, tuple[int, int]] = {}
    for part in parse_spec(spec):
        fmt, resolved = resolve_part(part)
        out.update(loader(fmt).widths(resolved))
    if not out:
        raise FileNotFoundError(f"no dictionary configs (with a width and an input size) in {spec}")
    return out


def describe(dictionaries: dict[str, Dictionary], model: Model) -> str:
    """Which submodules carry dictionaries (and so nodes), and which do not (a whole kind without any as
    ``every attn``): ``dictionaries on 18 of 19 submodules; without (no nodes): mlp_3``."""
    have = [s.name for s in model.all_submodules if s.name in dictionaries]
    without = [s for s in model.submodules if s.name not in dictionaries]  # z_l only when asked for
    text = f"dictionaries on {len(have)} of {len(have) + len(without)} submodules: {', '.join(have) or 'none'}"
    if not without:
        return text
    whole = sorted({s.kind for s in without if s.kind != "embed"
                    and all(t.name not in dictionaries for t in model.submodules if t.kind == s.kind)})
    named = [s.name for s in without if s.kind not in whole] + [f"every {k}" for k in whole]
    return f"{text}; without (no nodes): {', '.join(named)}"


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
