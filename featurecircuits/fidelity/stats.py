"""Agreement statistics between a method's node scores and their activation-patching effects."""

from __future__ import annotations

import math

import torch

from ..attribution import pearson


def _values(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64).flatten().cpu()


def ranks(x) -> torch.Tensor:
    """1-based ranks, ties given the mean of the ranks they span (as Spearman's correlation needs)."""
    x = _values(x)
    order = torch.argsort(x, stable=True)
    ranked = torch.empty_like(x)
    ranked[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranked)
    counts = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(x))
    return (sums / counts)[inverse]


def spearman(a, b) -> float:
    """Spearman's rank correlation: Pearson's of the (tie-averaged) ranks; NaN when either is constant."""
    return pearson(ranks(a), ranks(b))


def sign_agreement(a, b) -> float:
    """The fraction of nodes whose score and AP have the same sign (0 counts as a sign of its own)."""
    a, b = _values(a), _values(b)
    return float((torch.sign(a) == torch.sign(b)).double().mean()) if len(a) else math.nan


def top_k_overlap(scores, aps, k: int) -> float:
    """|top-k by |score| ∩ top-k by |AP|| / k over the given nodes, with k capped at their number (ties broken
    by listing order); NaN for no nodes."""
    scores, aps = _values(scores), _values(aps)
    k = min(k, len(scores))
    if k == 0:
        return math.nan
    top_s = set(torch.argsort(-scores.abs(), stable=True)[:k].tolist())
    top_a = set(torch.argsort(-aps.abs(), stable=True)[:k].tolist())
    return len(top_s & top_a) / k


def agreement(scores, aps, k: int) -> dict[str, float | None]:
    """Pearson, Spearman, sign agreement and top-k overlap of scores against AP (None where undefined)."""
    out = {"pearson": pearson(scores, aps) if len(scores) > 1 else math.nan,
           "spearman": spearman(scores, aps) if len(scores) > 1 else math.nan,
           "sign_agreement": sign_agreement(scores, aps), "top_k_overlap": top_k_overlap(scores, aps, k)}
    return {key: finite(v) for key, v in out.items()}


def finite(value: float) -> float | None:
    """A float for JSON: None for NaN or infinity (JSON has neither)."""
    return float(value) if value is not None and math.isfinite(value) else None
