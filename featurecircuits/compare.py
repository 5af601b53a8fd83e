"""The RelP paper's component-level experiment: AP vs AtP vs RelP (vs IG) at every layer and position.

For resid_l, attn_l and mlp_l at every layer and token position, each method's score is summed over the
hidden dimension. The Pearson correlation with AP is taken per component type under two poolings:

- ``cell_means``: each layer × position cell averaged over pairs first, then correlated over cells (the
  RelP paper's Table 5); prompts of different token lengths form separate groups whose cells are pooled.
- ``pairs_x_cells``: every pair × layer × position cell, nothing averaged — per-example agreement, which is
  lower and not smoothed by averaging.

AP is computed once per batch and reused for every method and every LRP rule set (``rules``: a sweep).
With ``groups`` (one label per batch, e.g. the IOI template) the figures are also given per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .attribution import attribute_splice, pearson
from .config import AttributionConfig, LRPConfig
from .data import Batch, logit_diff
from .models import Model
from .registry import method_info
from .splice import Splice

KINDS = ("resid", "attn", "mlp")
POOLINGS = {
    "cell_means": "each layer × position cell averaged over pairs, then correlated over cells (RelP paper, Table 5)",
    "pairs_x_cells": "every pair × layer × position cell, nothing averaged",
}

# The RelP paper's Table 5 (IOI, Pearson correlation with activation patching), for reference.
PAPER_TABLE5 = {
    "Pythia-70M": {"resid": {"atp": 0.728, "relp": 0.898}, "mlp": {"atp": 0.507, "relp": 0.967}},
    "GPT-2 Small": {"mlp": {"atp": 0.195, "relp": 0.992}},
}


@dataclass
class Comparison:
    model: str
    task: str
    methods: list[str]  # labels: a method name, or "relp[<rules>]" when several rule sets are swept
    n_pairs: int
    grids: dict[int, dict[str, dict[str, torch.Tensor]]]  # length → label → kind → (layers, positions), pair mean
    tokens: dict[int, list[str]]  # length → tokens of one clean prompt
    pcc: dict[str, dict[str, float]] = field(default_factory=dict)  # label → kind → PCC, cell-means pooling
    normalized: bool = False
    configs: dict[str, dict] = field(default_factory=dict)  # label → AttributionConfig.to_dict()
    pcc_pairs: dict[str, dict[str, float]] = field(default_factory=dict)  # label → kind → PCC, pairs × cells
    pairs: dict[int, dict[str, dict[str, torch.Tensor]]] = field(default_factory=dict)  # (pairs, layers, pos)
    pair_groups: dict[int, list[str]] = field(default_factory=dict)  # length → group label of each pair
    by_group: dict[str, dict] = field(default_factory=dict)  # group → {n_pairs, pooling → label → kind → PCC}

    @property
    def pcc_by_pooling(self) -> dict[str, dict[str, dict[str, float]]]:
        return {"cell_means": self.pcc, "pairs_x_cells": self.pcc_pairs}

    def to_dict(self) -> dict:
        return {"model": self.model, "task": self.task, "methods": self.methods, "n_pairs": self.n_pairs,
                "normalized": self.normalized, "pcc": self.pcc, "poolings": POOLINGS,
                "pcc_by_pooling": self.pcc_by_pooling, "by_group": self.by_group, "configs": self.configs,
                "groups": {str(k): {"tokens": self.tokens.get(k, []), "pair_groups": self.pair_groups.get(k, []),
                                    "grids": {m: {kind: g.tolist() for kind, g in by_kind.items()}
                                              for m, by_kind in v.items()}}
                           for k, v in self.grids.items()}}


def pooled_cells(grids, method: str, kind: str) -> torch.Tensor:
    """Every cell of one method and component type, over all length groups (of ``grids`` or ``pairs``)."""
    return torch.cat([grids[t][method][kind].flatten() for t in sorted(grids)])


def pooled_pcc(grids, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """label → kind → Pearson correlation with AP over the pooled cells of ``grids``."""
    return {m: {kind: pearson(pooled_cells(grids, "ap", kind), pooled_cells(grids, m, kind)) for kind in KINDS}
            for m in labels}


def normalized_logit_diff(batch: Batch, ld_clean: torch.Tensor, ld_patch: torch.Tensor):
    """``(LD − LD_patch) / (LD_clean − LD_patch)`` per example, as a metric for ``batch`` (and its
    tilings, which attribution methods use to run many patches at once)."""
    n = len(batch)

    def metric(logits, b):
        k = len(b) // n
        lo, hi = ld_patch.repeat(k), ld_clean.repeat(k)
        return (logit_diff(logits, b) - lo) / (hi - lo)

    metric.__name__ = "normalized_logit_diff"
    metric.last_positions = 1
    return metric


def rule_label(method: str, rules: LRPConfig, several: bool) -> str:
    """``relp`` for one rule set; ``relp[attention=ah]`` when several are swept."""
    return f"{method}[{rules.spec}]" if several else method


def method_configs(model: Model, methods: Sequence[str], attribution: AttributionConfig | None,
                   rules: Sequence[LRPConfig] | None, max_batch: int) -> dict[str, AttributionConfig]:
    """label → config resolved for the model, ``"ap"`` first: ``attribution`` with only the method replaced, and
    each rule set of ``rules`` for the methods that use rules (labelled ``relp[<rules>]`` when several)."""
    base = (attribution or AttributionConfig()).with_(max_batch=max_batch)
    rule_sets = list(rules) if rules else [base.lrp]
    configs: dict[str, AttributionConfig] = {"ap": base.with_(method="ap")}
    for m in (m for m in methods if m != "ap"):
        if method_info(m).uses_rules:
            for r in rule_sets:
                configs[rule_label(m, r, len(rule_sets) > 1)] = base.with_(method=m, lrp=r)
        else:
            configs[m] = base.with_(method=m)
    return {label: c.resolve(model.family.name) for label, c in configs.items()}


def _per_group(pairs, pair_groups, groups, labels) -> dict:
    """PCCs under both poolings over the pairs of each group (e.g. IOI template), when there are several."""
    by_group = {}
    names = list(dict.fromkeys(groups)) if groups is not None else []
    for name in names if len(names) > 1 else []:
        sel = {t: torch.tensor([g == name for g in pg]) for t, pg in pair_groups.items()}
        sub = {t: {label: {kind: v[sel[t]] for kind, v in by_kind.items()} for label, by_kind in g.items()}
               for t, g in pairs.items() if sel[t].any()}
        means = {t: {label: {kind: v.mean(0) for kind, v in by_kind.items()} for label, by_kind in g.items()}
                 for t, g in sub.items()}
        by_group[name] = {"n_pairs": int(sum(int(s.sum()) for s in sel.values())),
                          "cell_means": pooled_pcc(means, labels), "pairs_x_cells": pooled_pcc(sub, labels)}
    return by_group


def _batch_metric(model: Model, batch: Batch, normalized: bool):
    if not normalized:
        return logit_diff
    with torch.no_grad():
        ld_c = logit_diff(model.hf(input_ids=batch.clean, logits_to_keep=1).logits, batch)
        ld_p = logit_diff(model.hf(input_ids=batch.patch, logits_to_keep=1).logits, batch)
    return normalized_logit_diff(batch, ld_c, ld_p)


def _cells(model: Model, res) -> dict[str, torch.Tensor]:
    """kind → (pairs, layers, positions) scores of one batch's attribution result."""
    return {kind: torch.stack([res.scores[s.name] for s in model.submodules if s.kind == kind],
                              dim=1).detach().float().cpu() for kind in KINDS}


def compare(model: Model, batches: Sequence[Batch], *, methods: Sequence[str] = ("atp", "relp"),
            attribution: AttributionConfig | None = None, rules: Sequence[LRPConfig] | None = None,
            groups: Sequence[str] | None = None, normalized: bool = False, max_batch: int = 256,
            task_name: str = "task", progress: bool = False, checkpoint=None) -> Comparison:
    """Every method against AP, with ``attribution``'s direction and rules (only the method replaced).

    ``rules``: several LRP rule sets to sweep for the methods that use rules (default: ``attribution``'s);
    AP and the rule-free methods run once per batch. ``groups``: a label per batch (e.g. its IOI template).
    ``checkpoint`` (a :class:`featurecircuits.checkpoint.RunDir`) keeps each finished batch's grids, so an
    interrupted run resumes at the first unfinished batch and ends with the same result.
    """
    if groups is not None and len(groups) != len(batches):
        raise ValueError(f"groups needs one label per batch: {len(groups)} labels for {len(batches)} batches")
    configs = method_configs(model, methods, attribution, rules, max_batch)
    labels = [label for label in configs if label != "ap"]
    splice = Splice(model)
    per_pair: dict[int, dict[str, dict[str, list[torch.Tensor]]]] = {}
    pair_groups: dict[int, list[str]] = {}
    tokens: dict[int, list[str]] = {}
    for i, batch in enumerate(tqdm(batches, desc="compare", disable=not progress)):
        batch = batch.to(model.device)
        t = batch.n_tokens
        group = per_pair.setdefault(t, {})
        pair_groups.setdefault(t, []).extend([groups[i] if groups is not None else "all"] * len(batch))
        if t not in tokens and model.tokenizer is not None:
            tokens[t] = model.tokenizer.convert_ids_to_tokens(batch.clean[0].tolist())
        unit = f"compare-batch-{i}"
        if checkpoint is not None and unit in checkpoint:
            cells = checkpoint.load(unit)
        else:
            metric = _batch_metric(model, batch, normalized)
            cells = {label: _cells(model, attribute_splice(model, splice, batch, config, metric))
                     for label, config in configs.items()}
            if checkpoint is not None:
                checkpoint.save(unit, cells)
        for label, by_kind in cells.items():
            for kind, grid in by_kind.items():
                group.setdefault(label, {}).setdefault(kind, []).append(grid)
    pairs = {t: {label: {kind: torch.cat(v) for kind, v in by_kind.items()} for label, by_kind in g.items()}
             for t, g in per_pair.items()}
    grids = {t: {label: {kind: v.mean(0) for kind, v in by_kind.items()} for label, by_kind in g.items()}
             for t, g in pairs.items()}
    by_group = _per_group(pairs, pair_groups, groups, labels)
    n_pairs = sum(len(pg) for pg in pair_groups.values())
    return Comparison(model.name, task_name, labels, n_pairs, grids, tokens, pooled_pcc(grids, labels), normalized,
                      {label: c.to_dict() for label, c in configs.items()}, pooled_pcc(pairs, labels), pairs,
                      pair_groups, by_group)
