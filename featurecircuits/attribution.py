"""Node attribution: activation patching (AP), AtP, Relevance Patching (RelP) and integrated gradients (IG).

All four share one signature (:func:`attribute`) and score every node of the chosen submodules: at
component level a submodule's output at one position (summed over the hidden dimension); at feature
level each dictionary feature at each position, plus one error node per position.

Direction (recorded in the result): "noising" (default, Sparse Feature Circuits) runs on the clean input
and patches in the patch input's activations: Δ = a(patch) − a(clean), AP = m(clean with a ← a(patch)) −
m(clean). "denoising" swaps the roles. The metric and direction are the same for every method.

Cost: AtP and RelP take 2 forwards + 1 backward for all submodules together; IG takes N forwards and
backwards per submodule (batched along α); AP one patched copy per node and example, many stacked per
forward, each run from its position and layer on (:mod:`featurecircuits.patching`).
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .config import AttributionConfig, LRPConfig
from .data import Batch, Metric, logit_diff, logits_kept
from .lrp import apply_rules
from .models import Model, Submodule
from .patching import Patch, PatchEffects, Runs, both_runs, capture, check_metric, patch_effects, run_patches

# the activation-patching engine moved to featurecircuits.patching; these names stay importable from here
__all__ = ["Attribution", "Patch", "PatchEffects", "Runs", "ap", "atp", "attribute", "attribute_splice",
           "both_runs", "ig", "implementation", "patch_effects", "pearson", "relp"]
from .registry import method_info
from .sparse import coo, total
from .sparse import values as stored_values
from .splice import Parts, SparseLeaf, Splice, run

log = logging.getLogger(__name__)

@dataclass
class Attribution:
    """Per-example, per-position node scores, and what edge scoring needs.

    ``scores[sub]`` is (B, T) for a component-level submodule and (B, T, F) for a feature-level one (a
    sparse COO tensor for AtP/RelP with ``attribute(sparse=True)``, holding the features active in either run — read
    it with :mod:`featurecircuits.sparse`);
    ``error_scores[sub]`` is (B, T) for feature-level submodules. ``deltas`` and ``coefficients`` hold,
    per submodule and part ("act", "err"), Δ = source − base and the method's coefficient (gradient for
    AtP, LRP coefficient for RelP, path-averaged gradient for IG; none for AP).
    """

    method: str
    direction: str
    level: str
    submodules: list[str]
    scores: dict[str, torch.Tensor]
    error_scores: dict[str, torch.Tensor]
    metric_base: torch.Tensor  # m on the base run (clean when noising), per example
    metric_source: torch.Tensor  # m on the source run (patch when noising)
    deltas: dict[str, Parts] = field(default_factory=dict, repr=False)
    coefficients: dict[str, Parts] = field(default_factory=dict, repr=False)
    activations: dict[str, Parts] = field(default_factory=dict, repr=False)  # base-run parts
    config: AttributionConfig | None = None

    def node_totals(self, sub: str) -> torch.Tensor:
        """Per-example total over every node of a submodule (features + error), shape (B,)."""
        s = self.scores[sub]
        out = total(s, tuple(range(1, s.ndim)))
        if sub in self.error_scores:
            out = out + self.error_scores[sub].sum(1)
        return out

    def position_scores(self, sub: str) -> torch.Tensor:
        """(B, T) score per position: the component score, or features + error summed."""
        s = self.scores[sub]
        if s.ndim == 3:
            s = total(s, -1) + self.error_scores[sub]
        return s


def _check_tokens(model: Model, batch: Batch) -> None:
    vocab = model.hf.get_input_embeddings().num_embeddings
    for name in ("clean", "patch", "clean_answer", "patch_answer"):
        t = getattr(batch, name)
        if t.numel() and (t.min() < 0 or t.max() >= vocab):
            raise ValueError(f"{name} holds token ids outside the model's vocabulary [0, {vocab})")


def _reduce(splice: Splice, sub: Submodule, part: str, elementwise: torch.Tensor) -> torch.Tensor:
    """Sum over the hidden dimension, except for features (one score each)."""
    if part == "act" and splice.has_features(sub):
        return elementwise
    return elementwise.sum(-1)


def _finish(splice: Splice, cfg: AttributionConfig, per_part: dict[str, Parts], m_base, m_src,
            deltas, coefs, base_parts) -> Attribution:
    scores = {name: p["act"] for name, p in per_part.items()}
    errors = {name: p["err"] for name, p in per_part.items() if "err" in p}
    return Attribution(cfg.method, cfg.direction, splice.level, [s.name for s in splice.submodules],
                       scores, errors, m_base.detach(), m_src.detach(), deltas, coefs, base_parts, cfg)


# --------------------------------------------------------------------------------------------------
# AtP and RelP: one backward for all submodules


def _gradient_method(model: Model, splice: Splice, batch: Batch, metric: Metric, cfg: AttributionConfig,
                     rules: LRPConfig | None, progress: bool) -> Attribution:
    base_ids, src_ids = batch.roles(cfg.direction)
    src_parts, src_logits = capture(model, splice, src_ids, metric, sparse=splice.sparse)
    m_src = check_metric(metric(src_logits, batch).detach(), len(batch), "source")
    leaves: dict[str, Parts] = {}
    edit = splice.sparse_leaf_edit(leaves, src_parts) if splice.sparse else splice.leaf_edit(leaves)
    with apply_rules(model, rules) if rules is not None else nullcontext():
        logits = run(model, base_ids, edit, splice.submodules, logits_to_keep=logits_kept(metric))
    m_base = check_metric(metric(logits, batch), len(batch), "base")
    flat = [(name, part, t) for name, parts in leaves.items() for part, t in parts.items()]
    grads = torch.autograd.grad(m_base.sum(), [t.values if isinstance(t, SparseLeaf) else t for _, _, t in flat],
                                allow_unused=True)
    deltas: dict[str, Parts] = {}
    coefs: dict[str, Parts] = {}
    per_part: dict[str, Parts] = {}
    base_parts: dict[str, Parts] = {}
    by_name = {s.name: s for s in splice.submodules}
    for (name, part, leaf), g in zip(flat, grads, strict=True):
        if isinstance(leaf, SparseLeaf):  # one score per feature, stored where active in either run
            g = torch.zeros_like(leaf.values) if g is None else g
            d = leaf.source - leaf.values.detach()
            for store, v in ((deltas, d), (coefs, g), (per_part, d * g), (base_parts, leaf.values.detach())):
                store.setdefault(name, {})[part] = coo(leaf.indices, v, leaf.shape)
            continue
        g = torch.zeros_like(leaf) if g is None else g
        d = src_parts[name][part] - leaf.detach()
        deltas.setdefault(name, {})[part] = d
        coefs.setdefault(name, {})[part] = g
        per_part.setdefault(name, {})[part] = _reduce(splice, by_name[name], part, d * g)
        base_parts.setdefault(name, {})[part] = leaf.detach()
    return _finish(splice, cfg, per_part, m_base, m_src, deltas, coefs, base_parts)


def atp(model, splice, batch, metric, cfg, progress=False) -> Attribution:
    return _gradient_method(model, splice, batch, metric, cfg, None, progress)


def relp(model, splice, batch, metric, cfg, progress=False) -> Attribution:
    return _gradient_method(model, splice, batch, metric, cfg, cfg.lrp, progress)


# --------------------------------------------------------------------------------------------------
# IG: one submodule at a time, all its nodes interpolated together, steps batched


def _alphas(cfg: AttributionConfig) -> torch.Tensor:
    k = torch.arange(cfg.ig_steps, dtype=torch.float32)
    return (k + 0.5) / cfg.ig_steps if cfg.ig_rule == "midpoint" else k / cfg.ig_steps


def _expand(t: torch.Tensor, k: int) -> torch.Tensor:
    """Tile along the batch dimension, copy-major."""
    return t.repeat(k, *([1] * (t.ndim - 1)))


def ig(model, splice, batch, metric, cfg, progress=False) -> Attribution:
    runs = both_runs(model, splice, batch, metric, cfg)
    base_ids, base_parts, src_parts, m_base, m_src = (runs.base_ids, runs.base_parts, runs.source_parts,
                                                      runs.metric_base, runs.metric_source)
    n = len(batch)
    alphas = _alphas(cfg)
    per_chunk = max(1, cfg.max_batch // n)
    deltas, coefs, per_part = {}, {}, {}
    for sub in tqdm(splice.submodules, desc="IG", disable=not progress):
        base, src = base_parts[sub.name], src_parts[sub.name]
        delta = {k: src[k] - base[k] for k in base}
        grad_sum = {k: torch.zeros_like(v) for k, v in base.items()}
        for start in range(0, len(alphas), per_chunk):
            a = alphas[start:start + per_chunk]
            shape = (len(a) * n,)
            leaves = {}
            for k in base:
                av = a.to(base[k].dtype).repeat_interleave(n).view(*shape, *([1] * (base[k].ndim - 1)))
                leaves[k] = (_expand(base[k], len(a)) + av * _expand(delta[k], len(a))).requires_grad_(True)
            base_rep = {k: _expand(v, len(a)) for k, v in base.items()}

            def edit(s, x, leaves=leaves, base_rep=base_rep):
                return splice.patched(s, x, base_rep, leaves)

            logits = run(model, _expand(base_ids, len(a)), edit, [sub], logits_to_keep=logits_kept(metric))
            m = check_metric(metric(logits, batch.repeat(len(a))), len(a) * n, "interpolated")
            keys = list(leaves)
            grads = torch.autograd.grad(m.sum(), [leaves[k] for k in keys])
            for k, g in zip(keys, grads, strict=True):
                grad_sum[k] += g.view(len(a), n, *g.shape[1:]).sum(0)
        coefs[sub.name] = {k: g / cfg.ig_steps for k, g in grad_sum.items()}
        deltas[sub.name] = delta
        per_part[sub.name] = {k: _reduce(splice, sub, k, delta[k] * coefs[sub.name][k]) for k in base}
    return _finish(splice, cfg, per_part, m_base, m_src, deltas, coefs, base_parts)


# --------------------------------------------------------------------------------------------------
# AP: the exact effect of patching one node, many nodes per forward


def _ap_nodes(splice: Splice, sub: Submodule, delta: Parts) -> list[tuple[str, int, int | None]]:
    """(part, position, feature index or None for the whole vector) for every node that can move: a node
    whose value is the same in both runs for every example (e.g. every position before the prompts first
    differ) has an AP of exactly 0 and is not run."""
    if not splice.has_features(sub):
        return [("act", t, None) for t in _changed_positions(delta["act"])]
    moving = (delta["act"] != 0).any(0).nonzero().tolist()  # (t, i) where some example changes
    return [("act", t, i) for t, i in moving] + [("err", t, None) for t in _changed_positions(delta["err"])]


def _changed_positions(delta: torch.Tensor) -> list[int]:
    """Positions where some example's (B, T, d) vector differs between the runs."""
    return (delta != 0).any(-1).any(0).nonzero().flatten().tolist()


def ap(model, splice, batch, metric, cfg, progress=False) -> Attribution:
    """Every node that moves patched on its own, in every example
    (see :func:`featurecircuits.patching.patch_effects`)."""
    runs = both_runs(model, splice, batch, metric, cfg)
    deltas = {s.name: {k: runs.source_parts[s.name][k] - v for k, v in runs.base_parts[s.name].items()}
              for s in splice.submodules}
    out = {s.name: {k: torch.zeros(_reduce(splice, s, k, v).shape, device=v.device)
                    for k, v in runs.base_parts[s.name].items()} for s in splice.submodules}
    patches = [Patch(sub.name, part, i, (t,)) for sub in splice.submodules
               for part, t, i in _ap_nodes(splice, sub, deltas[sub.name])]
    for p, effect in zip(patches, run_patches(model, splice, batch, metric, cfg, runs, patches, progress).effects,
                         strict=True):
        out[p.submodule][p.part][(slice(None), p.positions[0], *(() if p.feature is None else (p.feature,)))] = effect
    return _finish(splice, cfg, out, runs.metric_base, runs.metric_source, deltas, {}, runs.base_parts)


def implementation(name: str) -> Callable[..., Attribution]:
    """The function computing method ``name`` (from the registry's ``module:function``)."""
    module, _, function = method_info(name).implementation.partition(":")
    return getattr(importlib.import_module(module), function)


def attribute(
    model: Model,
    batch: Batch,
    *,
    config: AttributionConfig | None = None,
    dictionaries: dict | None = None,
    submodules=None,
    metric: Metric = logit_diff,
    sparse: bool = False,
    progress: bool = False,
    **options,
) -> Attribution:
    """Score every node of ``submodules`` (default: those with dictionaries, else all).

    ``config`` (an :class:`AttributionConfig`) says how; keyword ``options`` (``method``, ``direction``,
    ``lrp``, ``ig_steps``, ``ig_rule``, ``max_batch``) change fields of it. With ``dictionaries`` (submodule
    name → Dictionary) nodes are features and error terms; without, component outputs per position.
    With ``sparse``, AtP and RelP keep feature tensors (scores, deltas, coefficients, activations) as sparse
    COO tensors over the features active in either run, and decode only those — equal to the dense path
    up to float rounding, at a fraction of the time and memory for wide dictionaries (``discover`` and
    curves use it; read such tensors with :mod:`featurecircuits.sparse`).
    """
    cfg = (config or AttributionConfig()).with_(**options).resolve(model.family.name)
    return attribute_splice(model, Splice(model, dictionaries, submodules, sparse=sparse), batch, cfg, metric,
                            progress=progress)


def attribute_splice(model: Model, splice: Splice, batch: Batch, cfg: AttributionConfig,
                     metric: Metric = logit_diff, *, progress: bool = False) -> Attribution:
    """The one internal entry behind :func:`attribute`: a :class:`Splice` built once by the caller and a
    config already resolved for the model's family (``AttributionConfig.resolve``), as public functions
    resolve it once at their door."""
    if not cfg.lrp.is_resolved:
        raise ValueError("attribute_splice needs a config resolved for the model's family "
                         "(config.resolve(model.family.name)); public functions do this at their door")
    if len(batch) == 0:
        raise ValueError("the batch is empty")
    _check_tokens(model, batch)
    batch = batch.to(model.device)
    result = implementation(cfg.method)(model, splice, batch, metric, cfg, progress)
    for name, s in result.scores.items():
        if not torch.isfinite(stored_values(s)).all():
            raise FloatingPointError(f"{cfg.method} produced non-finite scores at {name}")
    log.info("%s on %d examples × %d tokens: %d submodules", cfg.method, len(batch), batch.n_tokens,
             len(result.submodules))
    return result


def _flatten(x) -> torch.Tensor:
    if isinstance(x, (list, tuple)) and x and not isinstance(x[0], (int, float)):
        return torch.cat([_flatten(v) for v in x])
    return torch.as_tensor(x, dtype=torch.float64).detach().flatten().cpu()


def pearson(a, b) -> float:
    """Pearson correlation of two equally shaped arrays, tensors or lists of them (flattened); NaN when
    either is constant."""
    a, b = _flatten(a), _flatten(b)
    if a.shape != b.shape:
        raise ValueError(f"pearson needs equally many values, got {a.numel()} and {b.numel()}")
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")
