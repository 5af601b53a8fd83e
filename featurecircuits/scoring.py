"""Node scores over a task: totals per node from each batch's attribution, means over examples, and
selection by threshold or top-k. Shared by ``discover``, faithfulness curves and the benchmarks.

A node is ``(submodule, part, feature, position)``: part ``"act"`` (a feature, or a component's output)
or ``"err"`` (a dictionary's error term); feature ``None`` for components and error terms; position
``None`` when summed over positions.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm

from . import distributed, sparse
from .attribution import Attribution, attribute_splice
from .config import AttributionConfig
from .data import Batch, Metric
from .models import Model
from .nodes import NodeRef
from .registry import unknown
from .splice import Splice

Node = NodeRef  # a named tuple (submodule, part, feature, position)
Aggregation = Literal["sum", "none", "auto"]  # auto: none where every prompt has one length, else sum
PartKey = tuple[str, str]  # (submodule, part)

RESULT_MEMORY_BUDGET = 2 * 2**30  # bytes of per-batch attribution results kept for edge scoring


def check_threshold(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")


def check_aggregation(aggregation: str) -> None:
    if aggregation not in get_args(Aggregation):
        raise unknown("aggregation", aggregation, get_args(Aggregation))


def node_totals(res: Attribution, aggregation: str = "sum") -> dict[PartKey, torch.Tensor]:
    """Per-node score summed over the batch's examples (and over positions when ``aggregation="sum"``):
    (F,) or () per part when summed, (T, F) or (T,) when positions are kept."""
    out: dict[PartKey, torch.Tensor] = {}
    for sub in res.submodules:
        s = sparse.total(res.scores[sub], 0)  # (T,) or (T, F)
        parts = [("act", s)] + ([("err", res.error_scores[sub].sum(0))] if sub in res.error_scores else [])
        for part, t in parts:
            out[(sub, part)] = t.sum(0) if aggregation == "sum" else t
    return out


def result_bytes(res: Attribution) -> int:
    tensors = [t for group in (res.deltas, res.coefficients, res.activations) for parts in group.values()
               for t in parts.values()]
    return sum(sparse.nbytes(t) for t in tensors)


@dataclass
class NodeScores:
    """Mean node scores over a task's examples, and what edges and hover texts need afterwards."""

    means: dict[PartKey, torch.Tensor]  # mean over examples, see node_totals for shapes
    mean_activations: dict[str, torch.Tensor]  # feature submodules: mean activation per example and position
    metric_base: float  # mean metric on the base run (clean when noising)
    metric_source: float
    n_examples: int
    results: list[tuple[Batch, Attribution | None]] = field(default_factory=list)  # None: over the budget


def score_nodes(model: Model, splice: Splice, batches: Sequence[Batch], config: AttributionConfig, metric: Metric,
                *, aggregation: str = "sum", memory_budget: int = RESULT_MEMORY_BUDGET,
                progress: bool = False, checkpoint=None, unit: str = "nodes", reduce: bool = False) -> NodeScores:
    """Attribute every batch and average node scores over all examples. Each batch's full result is kept
    for edge scoring while all of them fit in ``memory_budget`` bytes, else dropped (recomputed later).

    With ``checkpoint`` (a :class:`featurecircuits.checkpoint.RunDir`) each batch's totals are saved as unit
    ``<unit>-<i>`` and read back instead of recomputed; a batch read back whose result would be kept is
    attributed again, so an interrupted and resumed run gives exactly what an uninterrupted one gives (the
    saving is in runs whose results are not kept: large ones, and curves).

    ``reduce``: ``batches`` are this rank's share of a torchrun launch's pairs (:mod:`featurecircuits.distributed`);
    the sums are added up over the ranks before the means, so every rank gets the means over all pairs (its
    ``results`` stay its own)."""
    sums: dict[PartKey, torch.Tensor] = {}
    act_sums: dict[str, torch.Tensor] = {}
    results: list[tuple[Batch, Attribution | None]] = []
    m_base = m_src = 0.0
    keep = True
    for i, batch in enumerate(tqdm(batches, desc=f"{config.method} nodes", disable=not progress)):
        res = None
        if checkpoint is not None and f"{unit}-{i}" in checkpoint:
            totals, acts, mb, ms, nbytes = _unpack(checkpoint.load(f"{unit}-{i}"))
        else:
            res = attribute_splice(model, splice, batch, config, metric)
            totals = node_totals(res, aggregation)
            acts = {sub: sparse.total(a["act"], (0, 1)) / batch.n_tokens for sub, a in res.activations.items()
                    if sub in splice.dictionaries}
            mb, ms = float(res.metric_base.sum()), float(res.metric_source.sum())
            nbytes = result_bytes(res)
            if checkpoint is not None:
                checkpoint.save(f"{unit}-{i}", {"totals": {"|".join(k): v for k, v in totals.items()},
                                                "acts": acts, "m_base": mb, "m_source": ms, "bytes": nbytes})
        if keep and nbytes * len(batches) > memory_budget:
            keep = False
            results = [(b, None) for b, _ in results]
        if keep and res is None:  # read back from the run folder, but its full result is wanted (edges, texts)
            res = attribute_splice(model, splice, batch, config, metric)
        for key, t in totals.items():
            sums[key] = sums.get(key, 0) + t
        for sub, a in acts.items():
            act_sums[sub] = act_sums.get(sub, 0) + a
        m_base += mb
        m_src += ms
        results.append((batch, res if keep else None))
    total = sum(len(b) for b in batches)
    if reduce:
        sums, act_sums, m_base, m_src, total = _across_ranks(sums, act_sums, m_base, m_src, total)
    return NodeScores({k: v / total for k, v in sums.items()}, {k: v / total for k, v in act_sums.items()},
                      m_base / total, m_src / total, total, results)


def _across_ranks(sums: dict, act_sums: dict, m_base: float, m_src: float, total: int):
    """The node, activation and metric sums and the pair count, added up over the ranks (one exchange)."""
    packed = {**{("node", *k): v for k, v in sums.items()}, **{("act", k): v for k, v in act_sums.items()},
              ("metric", "base"): m_base, ("metric", "source"): m_src, ("count",): total}
    got = distributed.reduce_sums(packed)
    return ({k[1:]: v for k, v in got.items() if k[0] == "node"}, {k[1]: v for k, v in got.items() if k[0] == "act"},
            got[("metric", "base")], got[("metric", "source")], got[("count",)])


def _unpack(saved: dict):
    totals = {tuple(k.split("|")): v for k, v in saved["totals"].items()}
    return totals, saved["acts"], saved["m_base"], saved["m_source"], saved["bytes"]


def node_values(means: dict[PartKey, torch.Tensor], features: Collection[str], *,
                threshold: float | None = None) -> dict[Node, float]:
    """Nodes with their score, in submodule order; ``features`` names the submodules with dictionaries.
    Features are listed only where nonzero, or with |score| ≥ ``threshold`` when one is given (so wide
    dictionaries never become long Python lists)."""
    out: dict[Node, float] = {}
    for (sub, part), mean in means.items():
        is_feature = part == "act" and sub in features
        positional = mean.ndim == (2 if is_feature else 1)
        if is_feature:
            hit = mean.nonzero() if threshold is None else (mean.abs() >= threshold).nonzero()
            for ix in hit.tolist():
                out[NodeRef(sub, "act", ix[-1], ix[0] if positional else None)] = float(mean[tuple(ix)])
        elif positional:
            for pos, v in enumerate(mean.tolist()):
                out[NodeRef(sub, part, None, pos)] = v
        else:
            out[NodeRef(sub, part, None, None)] = float(mean)
    return out


def select(values: dict[Node, float], *, threshold: float | None = None, top_k: int | None = None
           ) -> dict[Node, float]:
    """The nodes with |score| ≥ ``threshold`` (all when None), at most the ``top_k`` largest |score| of them
    (ties in listing order)."""
    check_threshold("threshold", threshold)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
    kept = dict(values) if threshold is None else {k: v for k, v in values.items() if abs(v) >= threshold}
    return kept if top_k is None else dict(sorted(kept.items(), key=lambda kv: -abs(kv[1]))[:top_k])


def select_nodes(scores: NodeScores, splice: Splice, *, threshold: float | None = None,
                 top_k: int | None = None) -> dict[Node, float]:
    """The nodes with |score| ≥ ``threshold``, or the ``top_k`` largest |score|, or, both given, the ``top_k``
    largest of those with |score| ≥ ``threshold`` (a threshold of 0 with ``top_k``: no threshold, the nonzero
    nodes ranked)."""
    if top_k is not None:
        threshold = threshold or None
        return select(node_values(scores.means, splice.dictionaries, threshold=threshold), threshold=threshold,
                      top_k=top_k)
    return select(node_values(scores.means, splice.dictionaries, threshold=threshold), threshold=threshold)


def top_nodes(res: Attribution, k: int) -> list[Node]:
    """The ``k`` nodes with the largest |score| summed over the examples and positions of one result."""
    return list(select(node_values(node_totals(res, "sum"), res.error_scores), top_k=k))
