"""Can this circuit be trusted? Its method's node scores checked against the exact activation-patching effect of
a few of its nodes, and of a few nodes it left out.

Which nodes (3K at most): the K with the largest |score| in the circuit (``top``), K drawn at random from the
rest of the circuit (``inside``) and K drawn at random from the nodes outside it whose score on the verification
pairs is nonzero (``outside``); ``random.Random(seed)`` draws from the nodes sorted by id.

What is compared: each node's score recomputed with the circuit's own configuration, aggregation, metric and
submodules on the verification pairs (the circuit's recorded score is kept beside it), against its AP on the same
pairs, in the circuit's direction. A node summed over positions (the default ``aggregation="sum"``) is patched
at every position at once — what the node means, and what its score estimates to first order: RelP's summed score
is Σ_t Δ_t · c_t, the first-order effect of changing the node at every position together. With
``per_position=True`` the sum over positions of patching each position alone is reported too
(``ap_position_sum``). A node with positions kept is patched at its position.

``top_k_overlap`` = |top-K by |score| ∩ top-K by |AP|| / K, both taken among the evaluated nodes (K capped at
their number). ``sign_agreement``: the fraction of evaluated nodes whose score and AP have the same sign.
Cost: one attribution pass of the circuit's method over the pairs, then one patched sequence per evaluated node
and pair in which the node moves, batched (``patched_forwards`` counts them).
"""

from __future__ import annotations

import random
import time

import torch
from tqdm.auto import tqdm

from ..config import AttributionConfig
from ..data import Metric, logit_diff
from ..models import Model
from ..nodes import NodeRef
from ..patching import Patch, both_runs, patch_effects
from ..scoring import node_values, score_nodes
from ..splice import Splice
from ..tasks import as_batches
from .stats import agreement, finite

GROUPS = ("top", "inside", "outside")


def nodes_to_verify(circuit, estimates: dict[NodeRef, float], k: int, seed: int) -> list[tuple[NodeRef, str]]:
    """(node, group) for the top-``k`` circuit nodes by |recorded score|, ``k`` random other circuit nodes and
    ``k`` random nodes outside the circuit with a nonzero score in ``estimates``."""
    rng = random.Random(seed)
    inside = [circuit.ref(n) for n in circuit.nodes]
    top = sorted(inside, key=lambda r: -abs(circuit.score(r.id)))[:k]
    rest = sorted(set(inside) - set(top), key=lambda r: r.id)
    members = set(inside)
    outside = sorted((r for r, s in estimates.items() if r not in members and s != 0), key=lambda r: r.id)
    drawn = rng.sample(rest, min(k, len(rest))), rng.sample(outside, min(k, len(outside)))
    return [(r, "top") for r in top] + [(r, "inside") for r in drawn[0]] + [(r, "outside") for r in drawn[1]]


def _moving(runs, ref: NodeRef) -> torch.Tensor:
    """(B, T): where the node's value differs between the runs."""
    base, src = runs.base_parts[ref.submodule][ref.part], runs.source_parts[ref.submodule][ref.part]
    if ref.feature is not None:
        return base[..., ref.feature] != src[..., ref.feature]
    return (base != src).any(-1)


def _patches(runs, refs: list[NodeRef], per_position: bool) -> tuple[list[Patch], list[tuple[int, str]]]:
    """The patches of one batch and, for each, (index of its node, "joint" or "position")."""
    patches, owners = [], []
    for j, ref in enumerate(refs):
        moving = _moving(runs, ref)
        at = [ref.position] if ref.position is not None else moving.any(0).nonzero().flatten().tolist()
        ways = [("joint", at)] + ([("position", [t]) for t in at] if per_position and ref.position is None else [])
        for way, positions in ways:
            examples = moving[:, positions].any(1).nonzero().flatten().tolist() if positions else []
            if examples:  # else nothing moves: AP exactly 0
                patches.append(Patch(ref.submodule, ref.part, ref.feature, tuple(positions), tuple(examples)))
                owners.append((j, way))
    return patches, owners


def node_ap(model: Model, dictionaries: dict | None, batches, cfg: AttributionConfig, refs: list[NodeRef], *,
            metric: Metric = logit_diff, per_position: bool = False, progress: bool = False) -> dict:
    """Mean AP over the batches' examples of each node (patched at all its positions at once), and with
    ``per_position`` the mean of the per-position sum; ``rows`` and ``forwards`` run."""
    names = {r.submodule for r in refs}
    subs = [s.name for s in model.all_submodules if s.name in names]
    splice = Splice(model, {s: dictionaries[s] for s in subs if dictionaries and s in dictionaries} or None, subs)
    sums = {way: torch.zeros(len(refs), dtype=torch.float64) for way in ("joint", "position")}
    rows = forwards = n = 0
    for batch in tqdm(batches, desc="verify: AP", disable=not progress):
        batch = batch.to(model.device)
        runs = both_runs(model, splice, batch, metric, cfg)
        patches, owners = _patches(runs, refs, per_position)
        effects = patch_effects(model, splice, batch, cfg, patches, metric, runs=runs)
        for (j, way), effect in zip(owners, effects.effects.double().sum(1).cpu(), strict=True):
            sums[way][j] += effect
        rows, forwards, n = rows + effects.rows, forwards + effects.forwards, n + len(batch)
    return {"ap": sums["joint"] / n, "ap_position_sum": sums["position"] / n, "rows": rows, "forwards": forwards}


def verify_circuit(model: Model, dictionaries: dict | None, circuit, task_or_batches, *, k: int = 20, seed: int = 0,
                   n_examples: int | None = None, batch_size: int = 32, metric: Metric = logit_diff,
                   per_position: bool = False, progress: bool = True) -> dict:
    """Check a circuit's node scores against activation patching (see the module docstring for which nodes and
    what is compared). ``task_or_batches``: the pairs to verify on (a Task, JSONL path, Batch or Batches; give
    the circuit's own pairs for an in-sample check, others for a held-out one); ``n_examples``: how many of a
    task's pairs (default: as many as found the circuit). Returns a JSON-able dict: ``pearson``, ``spearman``,
    ``sign_agreement``, ``top_k_overlap`` (None where undefined), ``n`` nodes evaluated, ``k``, ``seed``,
    ``seconds``, ``patched_forwards``, per-group statistics and ``nodes`` [{id, score, ap, group, …}]."""
    start = time.perf_counter()
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    meta = circuit.metadata
    circuit.check_model(model)
    circuit.check_dictionaries(dictionaries or {})
    if meta.get("metric", "logit_diff") != getattr(metric, "__name__", "custom"):
        raise ValueError(f"this circuit was found with the metric {meta.get('metric')!r}; pass that metric "
                         f"(metric=...) to verify it, not {getattr(metric, '__name__', 'custom')!r}")
    cfg = AttributionConfig.from_dict(meta["config"]).resolve(model.family.name)
    aggregation = meta.get("aggregation", "sum")
    batches = as_batches(task_or_batches, model.tokenizer, batch_size=batch_size,
                         n_examples=n_examples if n_examples is not None else meta.get("n_examples"))
    splice = Splice(model, dictionaries, meta.get("submodules"), sparse=True)
    scores = score_nodes(model, splice, batches, cfg, metric, aggregation=aggregation, memory_budget=0,
                         progress=progress)
    estimates = node_values(scores.means, splice.dictionaries)
    chosen = nodes_to_verify(circuit, estimates, k, seed)
    refs = [r for r, _ in chosen]
    ap = node_ap(model, dictionaries, batches, cfg, refs, metric=metric, per_position=per_position,
                 progress=progress) if refs else {"ap": torch.zeros(0), "ap_position_sum": None, "rows": 0,
                                                  "forwards": 0}
    members = set(circuit.nodes)
    nodes = [{"id": r.id, "group": g, "score": estimates.get(r, 0.0), "ap": float(ap["ap"][j]),
              "circuit_score": circuit.score(r.id) if r.id in members else None,
              **({"ap_position_sum": float(ap["ap_position_sum" if r.position is None else "ap"][j])}
                 if per_position else {})}
             for j, (r, g) in enumerate(chosen)]
    return _report(nodes, k, seed, per_position, {
        "method": cfg.method, "config": cfg.to_dict(), "aggregation": aggregation, "n_examples": scores.n_examples,
        "seconds": time.perf_counter() - start, "patched_forwards": ap["rows"], "forward_calls": ap["forwards"]})


def _report(nodes: list[dict], k: int, seed: int, per_position: bool, extra: dict) -> dict:
    scores, aps = [n["score"] for n in nodes], [n["ap"] for n in nodes]
    out = {**agreement(scores, aps, k), "n": len(nodes), "k": k, "seed": seed, **extra}
    if per_position:
        out["pearson_position_sum"] = agreement(scores, [n["ap_position_sum"] for n in nodes], k)["pearson"]
    out["groups"] = {g: {"n": len(sel), **agreement([n["score"] for n in sel], [n["ap"] for n in sel], k)}
                     for g in GROUPS if (sel := [n for n in nodes if n["group"] == g])}
    out["nodes"] = [{**n, "score": finite(n["score"]), "ap": finite(n["ap"])} for n in nodes]
    return out
