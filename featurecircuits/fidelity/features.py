"""Feature-level agreement with activation patching: AtP, RelP and IG against the exact AP of every feature and
error node (or of a seeded sample of the features), per submodule kind and for error nodes.

A *node* is a (submodule, position, feature) cell, or a submodule's error term at a position. A node is
*active* in a pair when its value is nonzero in either run of that pair: only active nodes can move, and only
they can enter a circuit. A node inactive in both runs of a pair has AP exactly 0 and every gradient estimate
exactly 0 there (Δ = 0); such (pair, node) entries are left out of the pairs × cells pooling, and the nodes
inactive in every pair are left out altogether (``cell_means`` averages each remaining node over all pairs of
its token length, inactive pairs contributing their exact zeros).

Which nodes: for every token length, the nodes active in some pair of that length; with ``sample`` K, at most
K features per (submodule, position) drawn uniformly without replacement from those (one
``torch.Generator`` seeded with ``seed``, drawn in length, submodule, position order, so a run is reproducible
and resumable), plus every active error node. When K is at least the number of active features everywhere,
nothing is drawn and the nodes are exactly the exhaustive ones.

AP patches one node at one position, in each pair where it is active and moves (row-packed copies of those
pairs, run from the patched position and layer on: :func:`featurecircuits.patching.patch_effects`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..attribution import attribute_splice
from ..config import AttributionConfig
from ..data import Batch, logit_diff
from ..models import Model
from ..patching import Patch, Runs, both_runs, patch_effects
from ..registry import KINDS as SUBMODULE_KINDS
from ..sparse import dense
from ..splice import Splice

ERROR = "error"
POOLINGS = {
    "cell_means": "each (submodule, position, feature) node averaged over pairs, then correlated over the nodes "
                  "active in some pair",
    "pairs_x_cells": "every pair × node in which the node is active (nonzero in either run), nothing averaged",
}


def node_kinds(splice: Splice) -> list[str]:
    """The submodule kinds with feature nodes, in execution order, then ``error``."""
    present = {s.kind for s in splice.submodules}
    return [k for k in SUBMODULE_KINDS if k in present] + [ERROR]


def active_nodes(splice: Splice, runs: Runs) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """submodule → (features (B, T, F), error terms (B, T)): nonzero in either run."""
    out = {}
    for sub in splice.submodules:
        base, src = runs.base_parts[sub.name], runs.source_parts[sub.name]
        out[sub.name] = ((base["act"] != 0) | (src["act"] != 0),
                         (base["err"] != 0).any(-1) | (src["err"] != 0).any(-1))
    return out


def plan_nodes(model: Model, splice: Splice, batches: Sequence[Batch], cfg: AttributionConfig, *,
               sample: int | None = None, seed: int = 0, progress: bool = False) -> dict[int, torch.Tensor]:
    """token length → (N, 3) nodes [submodule index, position, feature (−1: the error term)]: the nodes active
    in some pair of that length, features sampled as the module says."""
    union: dict[int, dict[str, list[torch.Tensor]]] = {}
    for batch in tqdm(batches, desc="active nodes", disable=not progress):
        runs = both_runs(model, splice, batch.to(model.device), logit_diff, cfg)
        group = union.setdefault(batch.n_tokens, {})
        for name, (act, err) in active_nodes(splice, runs).items():
            seen = [act.any(0).cpu(), err.any(0).cpu()]
            group[name] = [a | b for a, b in zip(group[name], seen, strict=True)] if name in group else seen
    g = torch.Generator().manual_seed(seed)
    plan = {}
    for length in sorted(union):
        rows = []
        for si, sub in enumerate(splice.submodules):
            act, err = union[length][sub.name]
            for t in range(length):
                feats = act[t].nonzero().flatten()
                if sample is not None and len(feats) > sample:
                    feats = feats[torch.randperm(len(feats), generator=g)[:sample]].sort().values
                rows.append(torch.stack([torch.full_like(feats, si), torch.full_like(feats, t), feats], 1))
            errs = err.nonzero().flatten()
            rows.append(torch.stack([torch.full_like(errs, si), errs, torch.full_like(errs, -1)], 1))
        plan[length] = torch.cat(rows).long()
    return plan


def _at_nodes(splice: Splice, nodes: torch.Tensor, n: int, features, errors) -> torch.Tensor:
    """(n, N) float64 values at the nodes of n examples, from per-submodule features (n, T, F) and error values
    (n, T) (callables of the submodule name, asked only for submodules with such nodes)."""
    out = torch.zeros(n, len(nodes), dtype=torch.float64)
    for si, sub in enumerate(splice.submodules):
        mine = nodes[:, 0] == si
        for sel, values in ((mine & (nodes[:, 2] >= 0), features), (mine & (nodes[:, 2] < 0), errors)):
            if not sel.any():
                continue
            v = values(sub.name)
            at = (nodes[sel, 1], nodes[sel, 2]) if v.ndim == 3 else (nodes[sel, 1],)
            out[:, sel] = v[(slice(None), *at)].double().cpu()
    return out


def batch_values(model: Model, splice: Splice, batch: Batch, configs: dict[str, AttributionConfig],
                 nodes: torch.Tensor, *, normalized: bool = False) -> dict:
    """One batch: ``columns`` (which of ``nodes`` are active in some pair), ``active`` (B, n) and, per label,
    ``values`` (B, n) of every method and of AP at those nodes; ``rows``: patched sequences AP ran."""
    runs = both_runs(model, splice, batch, logit_diff, configs["ap"])
    masks = active_nodes(splice, runs)
    active = _at_nodes(splice, nodes, len(batch), lambda s: masks[s][0], lambda s: masks[s][1]).bool()
    columns = active.any(0).nonzero().flatten()
    nodes, active = nodes[columns], active[:, columns]
    base, src = runs.base_parts, runs.source_parts
    moving = _at_nodes(splice, nodes, len(batch), lambda s: base[s]["act"] != src[s]["act"],
                       lambda s: (base[s]["err"] != src[s]["err"]).any(-1))
    run_in = (active & moving.bool()).t()
    chosen = run_in.any(1).nonzero().flatten().tolist()
    names = [s.name for s in splice.submodules]
    patches = [Patch(names[int(nodes[j, 0])], "err" if nodes[j, 2] < 0 else "act",
                     None if nodes[j, 2] < 0 else int(nodes[j, 2]), (int(nodes[j, 1]),),
                     tuple(run_in[j].nonzero().flatten().tolist())) for j in chosen]
    effects = patch_effects(model, splice, batch, configs["ap"], patches, logit_diff, runs=runs)
    values = {"ap": torch.zeros(active.shape, dtype=torch.float64)}
    values["ap"][:, chosen] = effects.effects.t().double().cpu()
    for label, cfg in configs.items():
        if label != "ap":
            res = attribute_splice(model, splice, batch, cfg, logit_diff)
            values[label] = _at_nodes(splice, nodes, len(batch), lambda s, r=res: dense(r.scores[s]),
                                      lambda s, r=res: r.error_scores[s])
    if normalized:  # (LD − LD_patch)/(LD_clean − LD_patch) is affine per pair: every score scales alike
        clean, patch = ((runs.metric_base, runs.metric_source) if configs["ap"].direction == "noising"
                        else (runs.metric_source, runs.metric_base))
        values = {k: v / (clean - patch).double().cpu()[:, None] for k, v in values.items()}
    return {"columns": columns, "active": active, "values": values, "rows": effects.rows}
