"""Activation patching: the exact effect of many interventions on a batch, each run as copies of its examples.

A patch changes nothing before its first patched position nor below its submodule's decoder layer, so each
copy runs only the rest: from that position on over the key/value cache of the unpatched prefix
(``AttributionConfig.reuse_prefix``) and from that layer up (``reuse_layers``). The copies of one forward are
ordered by their first layer and join the batch there: decoder layer l runs only the copies whose patch lies
at or below it, the others take the unpatched run's layer-l output, so a forward costs about the layers its
rows run through rather than all layers for every row; and every prefix cache is cut from one cache of the
whole base run where the cache allows it. All give the effects of re-running the whole prompt through the
whole model, to float32 rounding.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .config import AttributionConfig
from .data import Batch, Metric, logit_diff, logits_kept
from .models import Model
from .splice import Parts, Splice, run


def check_metric(values: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """``values`` if it is one finite metric value per example, else a clear error."""
    if not isinstance(values, torch.Tensor) or values.shape != (n,):
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"the metric must return one value per example, shape ({n},); got {shape}")
    if not torch.isfinite(values).all():
        raise ValueError(f"the metric is not finite on the {what} run: {values.tolist()}")
    return values


def capture(model: Model, splice: Splice, ids: torch.Tensor, metric: Metric, *, sparse: bool = False
            ) -> tuple[dict[str, Parts], torch.Tensor]:
    """One forward without gradient: every submodule's parts, and the logits the metric reads."""
    store: dict[str, Parts] = {}
    edit = splice.sparse_capture_edit(store) if sparse else splice.capture_edit(store)
    with torch.no_grad():
        logits = run(model, ids, edit, splice.submodules, logits_to_keep=logits_kept(metric))
    return store, logits


@dataclass(frozen=True)
class Patch:
    """One intervention of activation patching: a node of ``submodule`` — feature ``feature`` of its
    dictionary, its error term (part ``"err"``) or, with ``feature`` None, the part's whole vector (a component
    output) — set to its source-run value at every position of ``positions`` at once, in the examples
    ``examples`` of the batch (``None``: every example). An example left out scores exactly 0: leave out only
    examples in which the node has the same value in both runs."""

    submodule: str
    part: str
    feature: int | None
    positions: tuple[int, ...]
    examples: tuple[int, ...] | None = None


@dataclass
class Runs:
    """A batch's two unpatched runs: the base ids, every submodule's parts on each run, the metric on each;
    ``hidden[l]``: decoder layer l's output on the base run, kept once a patched copy starts above it, and
    ``cache``: the base run's key/value cache, kept once prefixes are cut from it."""

    base_ids: torch.Tensor
    base_parts: dict[str, Parts]
    source_parts: dict[str, Parts]
    metric_base: torch.Tensor
    metric_source: torch.Tensor
    hidden: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    cache: object = field(default=None, repr=False)


@dataclass
class PatchEffects:
    """``effects[j, b]``: m(base run of example b with patch j) − m(base run of b); exactly 0 where patch j
    leaves example b out. ``rows``: patched sequences run (one per patch and example it covers);
    ``row_layers``: those rows times the decoder layers each ran through."""

    effects: torch.Tensor
    metric_base: torch.Tensor
    metric_source: torch.Tensor
    rows: int
    forwards: int
    row_layers: int = 0


def both_runs(model: Model, splice: Splice, batch: Batch, metric: Metric, cfg: AttributionConfig) -> Runs:
    """The base and source forwards (no gradient), every submodule's parts captured densely."""
    base_ids, src_ids = batch.roles(cfg.direction)
    base_parts, base_logits = capture(model, splice, base_ids, metric)
    src_parts, src_logits = capture(model, splice, src_ids, metric)
    m_base = check_metric(metric(base_logits, batch), len(batch), "base")
    m_src = check_metric(metric(src_logits, batch), len(batch), "source")
    return Runs(base_ids, base_parts, src_parts, m_base, m_src)


def patch_effects(model: Model, splice: Splice, batch: Batch, cfg: AttributionConfig, patches: list[Patch],
                  metric: Metric = logit_diff, *, runs: Runs | None = None, progress: bool = False) -> PatchEffects:
    """The exact effect of each patch on the metric (AP of a chosen set of nodes, or of nodes patched at several
    positions at once), in ``cfg``'s direction. Patches are run as copies of their examples, up to
    ``cfg.max_batch`` sequences per forward, each from its first patched position (over the base run's cached
    prefix, ``cfg.reuse_prefix``, when the metric declares the positions it reads) and from its submodule's
    layer (``cfg.reuse_layers``). ``runs``: the batch's unpatched runs when the caller has them
    (:func:`both_runs` with ``splice``). A metric given patches that leave examples out receives the sub-batch
    of the examples run (it must score each example on its own, as the logit difference does)."""
    batch = batch.to(model.device)
    runs = runs if runs is not None else both_runs(model, splice, batch, metric, cfg)
    known = {s.name for s in splice.submodules}
    for p in patches:
        if p.submodule not in known or not p.positions or p.part not in runs.base_parts[p.submodule]:
            raise ValueError(f"bad patch {p}: patches need one of the splice's submodules ({', '.join(known)}), a "
                             f"part it has and at least one position")
    return run_patches(model, splice, batch, metric, cfg, runs, patches, progress)


def run_patches(model, splice, batch, metric, cfg, runs: Runs, patches: list[Patch], progress=False
                ) -> PatchEffects:
    """Patches grouped by their first position, each group run from there on over the prefix cache, in
    chunks of at most ``cfg.max_batch`` sequences (at least one patch) that each start at their lowest layer."""
    n, T = len(batch), batch.n_tokens
    effects = torch.zeros(len(patches), n, dtype=runs.metric_base.dtype, device=runs.metric_base.device)
    by_pos: dict[int, list[int]] = {}
    for j, p in enumerate(patches):
        by_pos.setdefault(min(p.positions), []).append(j)
    layer_of = {s.name: max(s.layer, 0) if cfg.reuse_layers else 0 for s in splice.submodules}
    plans = {}  # position → chunks of patch indices, each ordered by first layer
    for t, members in by_pos.items():
        members = sorted(members, key=lambda j: layer_of[patches[j].submodule])  # stable
        widths = [n if patches[j].examples is None else len(patches[j].examples) for j in members]
        plans[t] = list(_chunks(members, widths, cfg.max_batch))
    layers = [layer_of[p.submodule] for p in patches] or [0]
    keep = logits_kept(metric)
    # what the skips and joins read and, copies run from their layer on, the cache every prefix is cut from
    cut = cfg.reuse_layers and cfg.reuse_prefix and bool(keep)
    _record_base(model, runs, range(max(min(layers) - 1, 0), max(layers)), cache=cut)
    rows = forwards = row_layers = 0
    for t in tqdm(sorted(plans), desc="AP positions", disable=not progress):
        start = min(t, T - keep) if keep and cfg.reuse_prefix else 0  # the first position that is run
        cache = None
        if start > 0:
            cache = (_cut(runs.cache, start) if cut else None) or _prefix_cache(model, runs.base_ids[:, :start])
        for chunk in plans[t]:
            chunk_patches = [patches[j] for j in chunk]
            m, ex, owner, ran = _patched_metric(model, splice, batch, metric, runs, cache, chunk_patches, start,
                                                [layer_of[p.submodule] for p in chunk_patches])
            effects[torch.tensor(chunk, device=ex.device)[owner], ex] = m - runs.metric_base[ex]
            rows, forwards, row_layers = rows + len(ex), forwards + 1, row_layers + ran
    return PatchEffects(effects, runs.metric_base, runs.metric_source, rows, forwards, row_layers)


def _chunks(items: list[int], widths: list[int], limit: int):
    """Consecutive runs of ``items`` whose widths add up to at most ``limit`` (at least one item each)."""
    chunk, size = [], 0
    for item, width in zip(items, widths, strict=True):
        if chunk and size + width > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += width
    if chunk:
        yield chunk


def _record_base(model: Model, runs: Runs, layers, *, cache: bool) -> None:
    """Record decoder layers' outputs on the base run in ``runs.hidden`` and, with ``cache``, its key/value
    cache in ``runs.cache``: one forward for whatever is missing."""
    missing = sorted(set(layers) - set(runs.hidden))
    cache = cache and runs.cache is None
    if not missing and not cache:
        return
    saved = {}
    with torch.no_grad(), model.nn.trace(input_ids=runs.base_ids, logits_to_keep=1, use_cache=cache):
        for layer in missing:  # in execution order
            saved[layer] = model.layer_envoy(layer).output.save()
        out = model.nn.output.save()
    if any(not isinstance(h, torch.Tensor) for h in saved.values()):  # transformers before 5 returned tuples
        raise RuntimeError("this transformers version's decoder layers do not return a tensor; upgrade "
                           "transformers or run AP with AttributionConfig(reuse_layers=False)")
    runs.hidden.update(saved)
    if cache:
        runs.cache = _returned_cache(out)


def _returned_cache(out):
    """The key/value cache a forward returned (``cache`` in transformers 5, ``past_key_values`` before)."""
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _prefix_cache(model: Model, prefix_ids: torch.Tensor):
    """The key/value cache of the unpatched prefix."""
    with torch.no_grad():
        return _returned_cache(model.hf(input_ids=prefix_ids, use_cache=True, logits_to_keep=1))


def _cut(cache, length: int):
    """``cache``'s first ``length`` positions, when every layer holds all positions as plain tensors (keys and
    values of a causal model's first positions do not depend on later ones); else None (e.g. a sliding window,
    which no longer holds the early positions)."""
    layers = getattr(cache, "layers", None)
    if cache is None or not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return None
    cut = copy.copy(cache)
    cut.layers = []
    for layer in layers:
        part = copy.copy(layer)
        part.keys, part.values = layer.keys[..., :length, :], layer.values[..., :length, :]
        cut.layers.append(part)
    return cut


def _cache_argument(model: Model) -> str:
    """The name under which the model's forward takes a cache (``cache`` in transformers 5)."""
    return "cache" if "cache" in inspect.signature(model.hf.forward).parameters else "past_key_values"


def _shifts(splice: Splice, runs: Runs, chunk: list[Patch], examples: list[torch.Tensor], start: int) -> dict:
    """submodule → [(rows, positions from ``start``, shift)]: what each patch adds to its rows of the copies
    (rows of copy j: that patch's examples), computed for every patch of a (submodule, part, positions) at once."""
    groups: dict[tuple, list[tuple[torch.Tensor, torch.Tensor, int | None]]] = {}
    offset = 0
    for p, ex in zip(chunk, examples, strict=True):
        rows = torch.arange(offset, offset + len(ex), device=ex.device)
        groups.setdefault((p.submodule, p.part, p.positions, p.feature is None), []).append((rows, ex, p.feature))
        offset += len(ex)
    by_name = {s.name: s for s in splice.submodules}
    shifts: dict[str, list] = {}
    for (name, part, positions, whole), members in groups.items():
        rows, ex = torch.cat([r for r, _, _ in members]), torch.cat([e for _, e, _ in members])
        pos = torch.tensor(positions, device=ex.device)
        at = (ex[:, None], pos[None, :])
        base = {key: v[at] for key, v in runs.base_parts[name].items()}  # (R, P, …)
        new = {key: v.clone() for key, v in base.items()}
        src = runs.source_parts[name][part][at]
        if whole:
            new[part] = src
        else:
            feats = torch.cat([torch.full((len(r),), f, device=ex.device) for r, _, f in members])
            r = torch.arange(len(ex), device=ex.device)
            new[part][r, :, feats] = src[r, :, feats]
        sub = by_name[name]
        shifts.setdefault(name, []).append((rows, pos - start, splice.compose(sub, new) - splice.compose(sub, base)))
    return shifts


def _patched_metric(model, splice, batch, metric, runs: Runs, cache, chunk: list[Patch], start: int,
                    firsts: list[int]):
    """(metric of every patched copy, the example each copy is, the patch of the chunk it carries, the copies
    times the layers each ran): patch j's copies of its examples, stacked, run from position ``start`` on over
    ``cache`` and from decoder layer ``firsts[j]`` up (non-decreasing along the chunk) over the base run's
    hidden states ``runs.hidden``."""
    n = len(batch)
    everyone = torch.arange(n, device=runs.base_ids.device)
    examples = [everyone if p.examples is None else torch.tensor(p.examples, device=everyone.device) for p in chunk]
    ex = torch.cat(examples)
    owner = torch.cat([torch.full((len(e),), j, device=ex.device) for j, e in enumerate(examples)])
    shifts = _shifts(splice, runs, chunk, examples, start)

    def edit(s, x):
        if s.name not in shifts:
            return None
        x = x.clone()
        for rows, pos, shift in shifts[s.name]:
            x[rows[:, None], pos[None, :]] += shift
        return x

    joins = torch.tensor(firsts)[owner.cpu()]  # each copy's first layer, non-decreasing
    per_layer = cache is None or len(getattr(cache, "layers", ())) == model.n_layers
    if not per_layer:
        joins[:] = joins[0]  # a cache without per-layer storage: every copy runs from the chunk's lowest layer
    active = {layer: int((joins <= layer).sum()) for layer in range(int(joins[0]), model.n_layers)}
    kwargs = {"use_cache": False}  # keys and values of the copies are never read again
    if cache is not None:
        kwargs = {_cache_argument(model): _tiled(cache, ex.cpu(), active, per_layer), "use_cache": True}

    def base(layer: int, rows: slice) -> torch.Tensor:
        """The unpatched run's layer-``layer`` output for copies ``rows``, from position ``start`` on."""
        h = runs.hidden[layer]
        return h[ex[rows].to(h.device)][:, start:]

    skip = (int(joins[0]), base(int(joins[0]) - 1, slice(None))) if joins[0] > 0 else None
    subs = [s for s in splice.submodules if s.name in shifts]
    rows_batch = batch.repeat(len(chunk)) if all(p.examples is None for p in chunk) else batch[ex]
    with torch.no_grad(), _joining(model, active, len(ex), base):
        logits = run(model, runs.base_ids[ex][:, start:], edit, subs, logits_to_keep=logits_kept(metric),
                     forward_kwargs=kwargs, skip=skip)
        m = check_metric(metric(logits, rows_batch), len(ex), "patched")
    return m, ex, owner, int((model.n_layers - joins).sum())


def _tiled(cache, ex: torch.Tensor, active: dict[int, int], per_layer: bool):
    """The prefix cache with rows ``ex``; with ``per_layer``, each layer's only for the copies that run it
    (the first ``active[l]``)."""
    tiled = copy.deepcopy(cache)
    if not per_layer:
        tiled.batch_select_indices(ex)
        return tiled
    for layer, held in enumerate(tiled.layers):
        # a skipped layer's keys are never read, but their length is (position ids, mask sizes): keep one row
        held.batch_select_indices(ex[:max(active.get(layer, 0), 1)])
    return tiled


def narrowed(value, k: int, rows: int):
    """``value`` (a layer's argument) restricted to the first ``k`` of ``rows`` sequences: tensors of two or
    more dimensions that are batch-first, inside tuples, lists and dicts too."""
    if isinstance(value, torch.Tensor):
        return value[:k] if value.ndim >= 2 and value.shape[0] == rows else value
    if isinstance(value, (tuple, list)):
        return type(value)(narrowed(v, k, rows) for v in value)
    if isinstance(value, dict):
        return {key: narrowed(v, k, rows) for key, v in value.items()}
    return value


@contextmanager
def _joining(model: Model, active: dict[int, int], rows: int, base):
    """While open, decoder layer l (a key of ``active``) runs only the first ``active[l]`` of ``rows`` copies;
    the rest take ``base(l, slice(active[l], None))``, the unpatched run's layer-l output for them."""
    handles = []
    for layer, k in active.items():
        if k == rows:
            continue
        module = model.layer_module(layer)

        def narrow(_, args, kwargs, k=k):
            return narrowed(args, k, rows), narrowed(kwargs, k, rows)

        def widen(_, args, kwargs, out, k=k, layer=layer):
            return torch.cat([out, base(layer, slice(k, None))])

        handles += [module.register_forward_pre_hook(narrow, with_kwargs=True),
                    module.register_forward_hook(widen, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
