"""Edge scores between nodes of adjacent submodules.

The weight of an edge u → d is ``c_d · ∂d/∂u · Δu`` (summed over the examples' positions, averaged over
examples), where c_d is the method's coefficient of the metric at d and ∂d/∂u is taken on the base run
(with the LRP rules for RelP).

How: one forward on the base input in which *every* spliced submodule's output is replaced by an autograd
leaf holding the same value. A downstream submodule's output is then a function of the nearest upstream
leaves only, so a vector-Jacobian product from its nodes reaches exactly its adjacent upstream
submodules, with the paths through the submodules in between cut — the Sparse Feature Circuits topology
(resid_{l-1}→attn_l; resid_{l-1}→mlp_l and, where the MLP reads the attention output, attn_l→mlp_l;
resid_{l-1}, attn_l, mlp_l → resid_l, with resid_{-1} = embed; with attention SAEs on z_l,
resid_{l-1}→z_l→attn_l). Upstream error terms take part only through the output they add to; gradients
reach the upstream outputs, and are mapped to features through the (linear) decoder, so no dense
(batch × position × features) tensor per downstream node is built. Cotangents at ReLU-family encoders
(feature and error nodes) are built in closed form from the base run's active features, which the
attribution already holds. Downstream nodes are processed many at a time with batched vector-Jacobian
products.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .attribution import Attribution
from .lrp import apply_rules
from .models import Model, Submodule
from .registry import METHODS
from .scoring import Node
from .sparse import column, columns, row_sums
from .splice import Splice, run


@dataclass
class EdgeScores:
    """``weights[(u, d)]`` for node tuples u upstream of d, *summed* over the batch's examples."""

    weights: dict[tuple[Node, Node], float]


def encoder_rows(ae) -> torch.Tensor | None:
    """Rows w_j with ∂f_j/∂x = 1[f_j > 0]·w_j (the dictionary's own declaration; None: use autograd)."""
    return ae.encoder_rows


def _chunk_cotangents(splice: Splice, sub: Submodule, group: list[Node], coef, x: torch.Tensor,
                      features: torch.Tensor | None) -> torch.Tensor:
    """(K, B, T, d) cotangents at the submodule output for K downstream nodes; feature and error nodes of
    ReLU-family encoders in closed form (``features`` = encode(x), dense or sparse), the rest by autograd."""
    ae = splice.dictionaries.get(sub.name)
    rows = encoder_rows(ae) if ae is not None else None
    out: list[torch.Tensor | None] = [None] * len(group)
    if rows is not None:
        for k, nd in enumerate(group):
            if nd[1] == "err":
                out[k] = error_cotangent(ae, rows, coef["err"], features, nd[3], x)
    fast = [k for k, nd in enumerate(group) if rows is not None and nd[1] == "act" and nd[2] is not None]
    if fast:
        with torch.no_grad():
            idx = torch.tensor([group[k][2] for k in fast])
            weight = columns(coef["act"], idx) * (columns(features, idx) > 0).to(x.dtype)  # (B, T, K)
            for j, k in enumerate(fast):
                pos = group[k][3]
                if pos is not None:  # a node at one position: the other positions do not count
                    keep = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
                    keep[pos] = 1
                    weight[..., j] = weight[..., j] * keep
            cots = torch.einsum("btk,kd->kbtd", weight, rows[idx].to(x.dtype))
        for j, k in enumerate(fast):
            out[k] = cots[j]
    for k, nd in enumerate(group):
        if out[k] is None:
            out[k] = node_cotangent(splice, sub, nd, coef, x)
    return torch.stack(out)


def error_cotangent(ae, enc_rows: torch.Tensor, c: torch.Tensor, features: torch.Tensor, pos: int | None,
                     x: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """The cotangent at x of ``Σ c · err`` (at ``pos``, or all positions) with ``err = x − decode(encode(x))``:
    ``c − Σ_j 1[f_j > 0] (c · dec_j) enc_j``, summed over the features active at each position only."""
    with torch.no_grad():
        c = c.to(x.dtype)
        if pos is not None:
            keep = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
            keep[pos] = 1
            c = c * keep[:, None]
        flat_c = c.reshape(-1, c.shape[-1])
        if features.is_sparse:  # coalesced (no duplicate entries); source-only features are stored as 0
            features = features if features.is_coalesced() else features.coalesce()
            idx, vals = features._indices(), features._values()
            idx = idx[:, vals > 0]
        else:
            idx = (features > 0).nonzero().t()
        if pos is not None:
            idx = idx[:, idx[1] == pos]
        rows, cols = idx[0] * features.shape[1] + idx[1], idx[2]  # (example, position) → flat row
        dec = ae.decoder_rows
        g = torch.cat([(flat_c[rows[i:i + chunk]] * dec[cols[i:i + chunk]]).sum(-1)
                       for i in range(0, len(rows), chunk)]) if len(rows) else flat_c.new_zeros(0)
        return (flat_c - row_sums(rows, cols, g, enc_rows.to(x.dtype), flat_c.shape[0])).view_as(x)


def node_cotangent(splice: Splice, sub: Submodule, node: Node, coef, x: torch.Tensor) -> torch.Tensor:
    """The cotangent at the submodule output x (B, T, d) of ``c_d · d`` for one downstream node."""
    _, part, feat, pos = node
    c = coef[part]
    mask = torch.ones(x.shape[:2], dtype=x.dtype)
    if pos is not None:
        mask = torch.zeros_like(mask)
        mask[:, pos] = 1
    if not splice.has_features(sub):
        return c * mask[..., None]
    ae = splice.dictionaries[sub.name]
    xl = x.detach().requires_grad_(True)
    f = ae.encode(xl)
    if part == "act":
        target = (f[..., feat] * column(c, feat) * mask).sum()
    else:  # error node: err = x - decode(f)
        err = xl - ae.decode(f)
        target = (err * c * mask[..., None]).sum()
    (g,) = torch.autograd.grad(target, xl)
    return g


def score_edges(
    model: Model,
    splice: Splice,
    batch,
    attribution: Attribution,
    nodes: Sequence[Node],
    *,
    chunk: int = 32,
) -> EdgeScores:
    """Edges among ``nodes`` (circuit nodes) for one batch, using ``attribution``'s Δ and coefficients."""
    if not attribution.config.info.edges:
        raise ValueError(f"method {attribution.method!r} has no coefficients to score edges with; use one of "
                         f"{', '.join(m.name for m in METHODS.values() if m.edges)}")
    cfg = attribution.config
    base_ids, _ = batch.roles(cfg.direction)
    rules = cfg.lrp if cfg.info.uses_rules else None
    leaves: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def edit(sub, x):
        outputs[sub.name] = x
        leaf = x.detach().requires_grad_(True)
        leaves[sub.name] = leaf
        return leaf

    with apply_rules(model, rules) if rules is not None else nullcontext():
        run(model, base_ids, edit, splice.submodules, logits_to_keep=1)  # the logits are not used
    by_name = {s.name: s for s in splice.submodules}
    order = [s.name for s in splice.submodules]
    by_sub: dict[str, list[Node]] = {}
    for node in nodes:
        by_sub.setdefault(node[0], []).append(node)
    weights: dict[tuple[Node, Node], float] = {}
    decoders = {name: ae.decoder_rows for name, ae in splice.dictionaries.items()}
    for d_name, d_nodes in by_sub.items():
        d_idx = order.index(d_name)
        upstream = [u for u in order[:d_idx] if u in by_sub]
        if not upstream:
            continue
        d_sub = by_name[d_name]
        coef = attribution.coefficients[d_name]
        x = outputs[d_name]
        ae = splice.dictionaries.get(d_name)
        features = _base_features(attribution, d_name, ae, x)
        for start in range(0, len(d_nodes), chunk):
            group = d_nodes[start:start + chunk]
            cot = _chunk_cotangents(splice, d_sub, group, coef, x, features)
            grads = torch.autograd.grad(x, [leaves[u] for u in upstream], cot, retain_graph=True,
                                        is_grads_batched=True, allow_unused=True)
            for u_name, g in zip(upstream, grads, strict=True):
                if g is None:
                    continue  # not adjacent: every path runs through another spliced submodule
                _accumulate(weights, group, by_sub[u_name], g, attribution.deltas[u_name], decoders.get(u_name))
    return EdgeScores(weights)


def _base_features(attribution: Attribution, name: str, ae, x: torch.Tensor) -> torch.Tensor | None:
    """The base run's features at ``name``: kept by the attribution (the edge forward runs the same input
    with the same value-preserving rules, so they are what encode(x) gives), else encoded here."""
    if ae is None:
        return None
    kept = attribution.activations.get(name, {}).get("act")
    if kept is not None and tuple(kept.shape) == (*x.shape[:-1], ae.width):
        return kept
    with torch.no_grad():
        return ae.encode(x.detach())


def _accumulate(weights, d_group, u_nodes, g, delta, dec) -> None:
    """g: (K, B, T, d) gradients at the upstream output for K downstream nodes."""
    for u in u_nodes:
        _, part, feat, pos = u
        if part == "act" and feat is not None:
            contrib = torch.einsum("kbth,h->kbt", g, dec[feat]) * column(delta["act"], feat)
        else:
            contrib = (g * delta[part]).sum(-1)  # (K, B, T)
        contrib = contrib[:, :, pos] if pos is not None else contrib.sum(-1)
        values = contrib.sum(1).tolist()
        for d, v in zip(d_group, values, strict=True):
            weights[(u, d)] = weights.get((u, d), 0.0) + v




