"""``compare --level feature``: every method against feature-level AP, pooled per node kind under two poolings,
overall and per group of pairs (e.g. IOI template), resumable per batch. What the nodes are, which are
included and how they are sampled: :mod:`featurecircuits.fidelity.features`."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..attribution import pearson
from ..compare import method_configs
from ..config import AttributionConfig, LRPConfig
from ..data import Batch
from ..dictionaries.spec import spec_of
from ..models import Model
from ..nodes import NodeRef
from ..splice import Splice
from .features import ERROR, POOLINGS, batch_values, node_kinds, plan_nodes
from .stats import finite

Pooled = dict[str, dict[str, torch.Tensor]]  # label ("ap" too) → kind → values


@dataclass
class FeatureComparison:
    """Feature-level PCCs with AP: ``pcc`` (cell means) and ``pcc_pairs`` (pairs × cells), label → kind → PCC,
    kinds being submodule kinds (feature nodes) and ``error``; ``cells`` and ``pairs`` hold the pooled values."""

    model: str
    task: str
    methods: list[str]
    kinds: list[str]
    n_pairs: int
    cells: Pooled
    pairs: Pooled
    pcc: dict[str, dict[str, float]]
    pcc_pairs: dict[str, dict[str, float]]
    configs: dict[str, dict]
    dictionaries: str | None
    sample: int | None
    seed: int
    normalized: bool = False
    by_group: dict[str, dict] = field(default_factory=dict)
    patched_forwards: int = 0  # patched sequences AP ran (one per node and pair in which it moves)
    seconds: float = 0.0
    level: str = "feature"
    cell_nodes: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # kind → (token length, id) of cells

    @property
    def pcc_by_pooling(self) -> dict[str, dict[str, dict[str, float]]]:
        return {"cell_means": self.pcc, "pairs_x_cells": self.pcc_pairs}

    @property
    def pcc_by_layer(self) -> dict[str, dict[str, dict[str, float]]]:
        """label → kind → layer → PCC with AP over that layer's cells (cell means; −1 is the embedding)."""
        out: dict = {m: {} for m in self.methods}
        for kind, nodes in self.cell_nodes.items():
            layers = torch.tensor([NodeRef.parse(node).layer for _, node in nodes])
            for layer in sorted(set(layers.tolist())):
                sel = layers == layer
                for m in self.methods:
                    ap, est = self.cells["ap"][kind][sel], self.cells[m][kind][sel]
                    out[m].setdefault(kind, {})[str(layer)] = pearson(ap, est) if len(ap) > 1 else math.nan
        return out

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """kind → how many nodes (cell means) and active pair × node entries (pairs × cells) were correlated."""
        return {k: {"nodes": len(self.cells["ap"][k]), "pair_nodes": len(self.pairs["ap"][k])} for k in self.kinds}

    def to_dict(self) -> dict:
        """The JSON written by ``compare --level feature`` (PCCs None where undefined: fewer than two nodes, or
        constant values). The runtime is left out, so that a resumed run writes what an uninterrupted one does."""
        clean = {pooling: {m: {k: finite(v) for k, v in by_kind.items()} for m, by_kind in table.items()}
                 for pooling, table in self.pcc_by_pooling.items()}
        return {"model": self.model, "task": self.task, "level": self.level, "methods": self.methods,
                "kinds": self.kinds, "n_pairs": self.n_pairs, "normalized": self.normalized,
                "dictionaries": self.dictionaries, "sample": {"k": self.sample, "seed": self.seed},
                "pcc": clean["cell_means"], "poolings": POOLINGS, "pcc_by_pooling": clean,
                "counts": self.counts, "patched_forwards": self.patched_forwards,
                "pcc_by_layer": {m: {k: {la: finite(v) for la, v in by.items()} for k, by in kinds.items()}
                                 for m, kinds in self.pcc_by_layer.items()},
                "by_group": {g: {key: ({m: {k: finite(v) for k, v in by_kind.items()} for m, by_kind in value.items()}
                                       if isinstance(value, dict) else value) for key, value in d.items()}
                             for g, d in self.by_group.items()},
                "configs": self.configs}


def _stack(plan: dict[int, torch.Tensor], batches: Sequence[Batch], units: list[dict]) -> dict[int, dict]:
    """token length → {"active": (pairs, N), label: (pairs, N)} over the length's planned nodes."""
    per: dict[int, dict[str, list[torch.Tensor]]] = {}
    for batch, unit in zip(batches, units, strict=True):
        t, cols, n = batch.n_tokens, unit["columns"], len(batch)
        group = per.setdefault(t, {})
        for key, value in (("active", unit["active"]), *unit["values"].items()):
            full = torch.zeros(n, len(plan[t]), dtype=value.dtype)
            full[:, cols] = value
            group.setdefault(key, []).append(full)
    return {t: {k: torch.cat(v) for k, v in g.items()} for t, g in per.items()}


def pooled(stacked: dict[int, dict], kind_index: dict[int, torch.Tensor], labels: Sequence[str],
           kinds: Sequence[str], pick: dict[int, torch.Tensor] | None = None) -> tuple[Pooled, Pooled]:
    """(cell means, pairs × cells) per label and kind over the pairs ``pick`` selects per length (default all):
    nodes active in some selected pair, averaged over the selected pairs; active (pair, node) entries."""
    cells: dict = {m: {k: [] for k in kinds} for m in ["ap", *labels]}
    pairs: dict = {m: {k: [] for k in kinds} for m in ["ap", *labels]}
    for t, g in sorted(stacked.items()):
        sel = pick[t] if pick is not None else torch.ones(len(g["active"]), dtype=torch.bool)
        if not sel.any():
            continue
        active = g["active"][sel]
        used = active.any(0)
        for ki, kind in enumerate(kinds):
            cols = used & (kind_index[t] == ki)
            for m in cells:
                v = g[m][sel][:, cols]
                cells[m][kind].append(v.mean(0))
                pairs[m][kind].append(v[active[:, cols]])
    cat = lambda d: {m: {k: torch.cat(v) if v else torch.zeros(0) for k, v in by.items()} for m, by in d.items()}  # noqa: E731
    return cat(cells), cat(pairs)


def cell_nodes(stacked: dict[int, dict], kind_index: dict[int, torch.Tensor], plan: dict[int, torch.Tensor],
               splice: Splice, kinds: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
    """kind → (token length, node id) of every cell of the cell-means pooling over all pairs, in its order."""
    names = [s.name for s in splice.submodules]
    out: dict[str, list[tuple[int, str]]] = {k: [] for k in kinds}
    for t, g in sorted(stacked.items()):
        used = g["active"].any(0)
        for ki, kind in enumerate(kinds):
            for si, pos, feat in plan[t][used & (kind_index[t] == ki)].tolist():
                out[kind].append((t, NodeRef(names[si], "err" if feat < 0 else "act", None if feat < 0 else feat,
                                             pos).id))
    return out


def pcc_table(values: Pooled, labels: Sequence[str], kinds: Sequence[str]) -> dict[str, dict[str, float]]:
    """label → kind → Pearson correlation with AP (NaN with fewer than two values)."""
    return {m: {k: pearson(values["ap"][k], values[m][k]) if len(values["ap"][k]) > 1 else math.nan
                for k in kinds} for m in labels}


def _kind_index(plan: dict[int, torch.Tensor], splice: Splice, kinds: list[str]) -> dict[int, torch.Tensor]:
    sub_kind = torch.tensor([kinds.index(s.kind) for s in splice.submodules])
    return {t: torch.where(nodes[:, 2] < 0, kinds.index(ERROR), sub_kind[nodes[:, 0]]) for t, nodes in plan.items()}


def _per_group(stacked, kind_index, pair_groups, labels, kinds) -> dict:
    names = list(dict.fromkeys(g for pg in pair_groups.values() for g in pg))
    out = {}
    for name in names if len(names) > 1 else []:
        pick = {t: torch.tensor([g == name for g in pg]) for t, pg in pair_groups.items()}
        cells, pairs = pooled(stacked, kind_index, labels, kinds, pick)
        out[name] = {"n_pairs": int(sum(int(p.sum()) for p in pick.values())),
                     "cell_means": pcc_table(cells, labels, kinds), "pairs_x_cells": pcc_table(pairs, labels, kinds)}
    return out


def compare_features(model: Model, dictionaries: dict, batches: Sequence[Batch], *,
                     methods: Sequence[str] = ("atp", "relp"), attribution: AttributionConfig | None = None,
                     rules: Sequence[LRPConfig] | None = None, groups: Sequence[str] | None = None,
                     normalized: bool = False, sample: int | None = None, seed: int = 0, max_batch: int = 256,
                     submodules: Sequence[str] | None = None, task_name: str = "task", progress: bool = True,
                     checkpoint=None) -> FeatureComparison:
    """Every method against the exact AP of the feature and error nodes of ``dictionaries`` (all active ones, or
    ``sample`` features per submodule and position, seeded by ``seed``); arguments as for
    :func:`featurecircuits.compare.compare`. AtP and RelP run on the sparse path. ``checkpoint`` keeps each
    finished batch, so an interrupted run resumes and ends with the same result."""
    start = time.perf_counter()
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
        raise ValueError(f"sample must be a positive integer (features per submodule and position), got {sample!r}")
    if groups is not None and len(groups) != len(batches):
        raise ValueError(f"groups needs one label per batch: {len(groups)} labels for {len(batches)} batches")
    if not dictionaries:
        raise ValueError("a feature-level comparison needs dictionaries (e.g. load_dictionaries('neurons', model))")
    configs = method_configs(model, methods, attribution, rules, max_batch)
    labels = [label for label in configs if label != "ap"]
    splice = Splice(model, dictionaries, submodules, sparse=True)
    batches = [b.to(model.device) for b in batches]
    plan = plan_nodes(model, splice, batches, configs["ap"], sample=sample, seed=seed, progress=progress)
    units = []
    for i, batch in enumerate(tqdm(batches, desc="compare features", disable=not progress)):
        unit = f"features-batch-{i}"
        if checkpoint is not None and unit in checkpoint:
            units.append(checkpoint.load(unit))
            continue
        units.append(batch_values(model, splice, batch, configs, plan[batch.n_tokens], normalized=normalized))
        if checkpoint is not None:
            checkpoint.save(unit, units[-1])
    kinds = node_kinds(splice)
    stacked, kind_index = _stack(plan, batches, units), _kind_index(plan, splice, kinds)
    cells, pairs = pooled(stacked, kind_index, labels, kinds)
    pair_groups: dict[int, list[str]] = {}
    for i, batch in enumerate(batches):
        pair_groups.setdefault(batch.n_tokens, []).extend([groups[i] if groups is not None else "all"] * len(batch))
    return FeatureComparison(
        model.name, task_name, labels, kinds, sum(len(b) for b in batches), cells, pairs,
        pcc_table(cells, labels, kinds), pcc_table(pairs, labels, kinds),
        {label: c.to_dict() for label, c in configs.items()}, spec_of(splice.dictionaries), sample, seed, normalized,
        _per_group(stacked, kind_index, pair_groups, labels, kinds), sum(u["rows"] for u in units),
        time.perf_counter() - start, cell_nodes=cell_nodes(stacked, kind_index, plan, splice, kinds))
