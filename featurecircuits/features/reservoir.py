"""Reservoirs: per group (a feature, or a feature's activation band), the m entries with the best score seen
so far, each with its token window. Slots are unordered (cards sort them); the worst held score of a group
is the bar a new candidate must clear, so after the first batches almost every firing is rejected by one
comparison.

Merging a batch's candidates touches only what changes: candidates are ranked within their group (one
sort of the candidates, never of the held entries); a candidate enters iff its rank among the candidates
plus the number of held entries at least as good is below m (held entries win ties); the entrants of a
group take the slots of its worst held entries (empty slots first). With window keys (the top-k), a
candidate whose window a group already holds updates that entry in place when it is stronger and is
dropped otherwise, and only the strongest of equal windows within a batch is a candidate at all, so every
group holds m distinct windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["NEG", "Reservoir", "group_ranks", "merge", "ranked", "regroup"]

NEG = float("-inf")


@dataclass
class Reservoir:
    """Up to m entries per group (``score`` -inf: an empty slot)."""

    score: torch.Tensor  # (G, m) float32, ≥ 0 when held (activations, or random keys in [0, 1))
    value: torch.Tensor  # (G, m) float32 activation at the firing token
    where: torch.Tensor  # (G, m) int64 row << 20 | position
    tokens: torch.Tensor  # (G, m, L) int32 token window, -1 outside the row
    acts: torch.Tensor  # (G, m, L) float32 the feature's activation across the window
    key: torch.Tensor | None = None  # (G, m) int64 window hash (top-k only)

    FIELDS = ("score", "value", "where", "tokens", "acts", "key")

    @classmethod
    def empty(cls, groups: int, m: int, width: int, device=None, hashed: bool = False) -> Reservoir:
        return cls(torch.full((groups, m), NEG, device=device), torch.zeros(groups, m, device=device),
                   torch.zeros(groups, m, dtype=torch.long, device=device),
                   torch.full((groups, m, width), -1, dtype=torch.int32, device=device),
                   torch.zeros(groups, m, width, device=device),
                   torch.zeros(groups, m, dtype=torch.long, device=device) if hashed else None)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{f}": getattr(self, f) for f in self.FIELDS if getattr(self, f) is not None}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str) -> Reservoir:
        return cls(**{f: tensors.get(f"{prefix}.{f}") for f in cls.FIELDS})

    @property
    def m(self) -> int:
        return self.score.shape[1]

    def bar(self) -> torch.Tensor:
        """(G,) the worst held score per group (-inf while a group has room)."""
        return self.score.amin(1)

    def put(self, flat: torch.Tensor, fields: dict) -> None:
        """Write entries at flat slots ``group * m + slot``."""
        for name, value in fields.items():
            target = getattr(self, name)
            if target is not None:
                target.view(-1, *target.shape[2:])[flat] = value.to(target.dtype)


def ranked(groups: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, rank): entries ordered by group, best score first, and each one's rank within its group.
    Scores must be ≥ 0: their float bits then sort like the floats, so one int64 sort does both keys."""
    bits = scores.float().contiguous().view(torch.int32).long()
    order = torch.argsort(groups.long() * 2**32 + (2**31 - 1 - bits), stable=True)
    return order, group_ranks(groups[order])


def group_ranks(g: torch.Tensor) -> torch.Tensor:
    """Each entry's index within its run of equal values of ``g`` (sorted by group)."""
    pos = torch.arange(g.numel(), device=g.device)
    starts = torch.ones_like(g, dtype=torch.bool)
    starts[1:] = g[1:] != g[:-1]
    first = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), 0).values
    return pos - first


def _first_of_each(h: torch.Tensor) -> torch.Tensor:
    """Mask of the first occurrence of each value of ``h`` (in the given order)."""
    _, inverse = torch.unique(h, return_inverse=True)
    pos = torch.arange(h.numel(), device=h.device)
    first = torch.full((int(inverse.max()) + 1,), h.numel(), device=h.device, dtype=torch.long)
    first.scatter_reduce_(0, inverse, pos, "amin")
    return first[inverse] == pos


def _known_windows(res: Reservoir, g, s, k, idx, payload) -> torch.Tensor:
    """Candidates (ordered, deduplicated) whose window their group holds: the stronger update it in place.
    Returns the mask of the others."""
    m = res.m
    match = (res.key[g] == k[:, None]) & (res.score[g] > NEG)
    known = match.any(1)
    if bool(known.any()):
        slot = match.int().argmax(1)
        better = (known & (s > res.score[g, slot])).nonzero().squeeze(1)
        if better.numel():
            res.put(g[better] * m + slot[better], {"score": s[better], **payload(idx[better])})
    return ~known


def merge(res: Reservoir, groups: torch.Tensor, scores: torch.Tensor, payload, keys: torch.Tensor | None = None):
    """Offer candidates (``groups``, ``scores`` ≥ 0; with ``keys``, window hashes) to the reservoir;
    ``payload(i)`` gives the fields of candidates ``i`` (value, where, tokens, acts, key) when they enter."""
    if not groups.numel():
        return
    order, rank = ranked(groups, scores)
    g, s, idx = groups[order], scores[order], order
    if keys is not None:
        k = keys[order]
        once = _first_of_each(k * 1_000_003 + g)  # the strongest of equal windows in a group
        g, s, idx, k = g[once], s[once], idx[once], k[once]
        fresh = _known_windows(res, g, s, k, idx, payload)
        g, s, idx = g[fresh], s[fresh], idx[fresh]
        rank = group_ranks(g)  # still in group order: ranks among the remaining candidates
    held = res.score[g]  # (n, m)
    enter = (rank + (held >= s[:, None]).sum(1) < res.m).nonzero().squeeze(1)
    if not enter.numel():
        return
    g, s, idx, rank = g[enter], s[enter], idx[enter], rank[enter]
    worst_first = torch.argsort(res.score[g], dim=1, stable=True)  # empty slots (-inf) first
    slot = worst_first.gather(1, rank[:, None]).squeeze(1)
    res.put(g * res.m + slot, {"score": s, **payload(idx)})


def regroup(res: Reservoir, touched: torch.Tensor, new_group: torch.Tensor) -> None:
    """Move every entry of the ``touched`` groups to ``new_group`` (one per touched group) and keep the m
    best per resulting group (how a feature's bands fold when its scale grows)."""
    m = res.m
    flat = (touched[:, None] * m + torch.arange(m, device=touched.device)).reshape(-1)
    scores = res.score.view(-1)[flat]
    held = scores > NEG
    flat, scores = flat[held], scores[held]
    groups = new_group.repeat_interleave(m)[held]
    order, rank = ranked(groups, scores)
    keep = order[rank < m]
    fields = {name: getattr(res, name).view(-1, *getattr(res, name).shape[2:])[flat[keep]]
              for name in Reservoir.FIELDS if getattr(res, name) is not None}
    res.score[touched] = NEG
    res.put(groups[keep] * m + rank[rank < m], fields)
