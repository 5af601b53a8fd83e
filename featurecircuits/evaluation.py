"""Faithfulness and completeness of circuits under ablation, and faithfulness-vs-size curves.

Every spliced submodule's parts are recomputed from what it receives (downstream dictionaries re-encode
the ablated stream); nodes outside the evaluated set are replaced by their ablation value: the mean over
the evaluation examples' patch prompts per position ("mean"), zero ("zero"), or the patch prompt of another
example ("resample"). ``faithfulness(C) = (m(C) − m(∅)) / (m(M) − m(∅))`` as a ratio of means over
examples; ``completeness(C)`` is the same with C itself ablated (ideal 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .circuit import Circuit, rank_metadata
from .config import AblationConfig, AttributionConfig
from .data import Batch, Metric, logit_diff, logits_kept
from .errors import UsageError
from .models import Model
from .scoring import check_threshold, score_nodes
from .splice import Splice, run
from .splits import record, task_split, warn_in_sample
from .tasks import as_batches

Masks = dict[str, dict[str, torch.Tensor]]  # submodule → part → bool mask, (F,)/(T, F) or ()/(T,)


@dataclass
class Faithfulness:
    faithfulness: float
    completeness: float
    m_circuit: float
    m_complement: float
    m_empty: float
    m_full: float
    n_nodes: int  # circuit nodes the evaluation ablates (not those in layers given for free, nor kept errors)
    n_edges: int | None
    config: dict = field(default_factory=dict)
    split: str | None = None  # the task's pairs it was measured on (None: batches given directly)
    n_examples: int = 0
    in_sample: float = 0.0  # the fraction of those pairs that found the circuit (0: held out)
    world_size: int = 1  # ranks of a torchrun launch that shared the pairs
    ranks: list[int] | None = None  # pairs per rank (None: one process)


def masks_from_nodes(splice: Splice, nodes, n_tokens: int) -> Masks:
    """Boolean masks of a node set, per submodule and part, positions expanded to ``n_tokens``."""
    masks: Masks = {}
    for sub in splice.submodules:
        width = splice.width(sub) if splice.has_features(sub) else None
        m = {"act": torch.zeros((n_tokens, width) if width else (n_tokens,), dtype=torch.bool)}
        if splice.has_features(sub):
            m["err"] = torch.zeros(n_tokens, dtype=torch.bool)
        masks[sub.name] = m
    for sub, part, feat, pos in nodes:
        if sub not in masks:
            raise ValueError(f"circuit node in submodule {sub!r}, which is not spliced here "
                             f"({', '.join(masks)})")
        target = masks[sub][part]
        rows = slice(None) if pos is None else pos
        if pos is not None and pos >= n_tokens:
            raise ValueError(f"circuit node at position {pos}, but the prompts have {n_tokens} tokens")
        if feat is not None:
            target[rows, feat] = True
        else:
            target[rows] = True
    return masks


def _ablatable(sub, cfg: AblationConfig) -> bool:
    return (sub.kind != "embed" or cfg.include_embed) and (sub.kind == "embed" or sub.layer >= cfg.start_layer)


def _counted(model: Model, sub_name: str, part: str, cfg: AblationConfig) -> bool:
    """Whether nodes of this submodule part are subject to the ablation (and so count toward circuit size)."""
    return _ablatable(model.submodule(sub_name), cfg) and (part != "err" or cfg.errors == "ablate")


def ablated_metric(model: Model, splice: Splice, batch: Batch, keep: Masks, cfg: AblationConfig,
                   metric: Metric = logit_diff, *, source: dict | None = None) -> torch.Tensor:
    """Metric per example with every node outside ``keep`` ablated (``source``: ablation values)."""
    if source is None:
        source = ablation_values(model, splice, batch, cfg)

    def edit(sub, x):
        if not _ablatable(sub, cfg):
            return None
        parts = splice.parts(sub, x)
        new = {}
        for part, value in parts.items():
            if part == "err" and cfg.errors != "ablate":
                new[part] = value if cfg.errors == "keep" else torch.zeros_like(value)
                continue
            mask = keep[sub.name][part].to(value.device)
            mask = mask if mask.ndim == value.ndim - 1 else mask[..., None]
            new[part] = torch.where(mask, value, source[sub.name][part])
        return splice.compose(sub, new)

    with torch.no_grad():
        return metric(run(model, batch.clean, edit, splice.submodules, logits_to_keep=logits_kept(metric)), batch)


def ablation_values(model: Model, splice: Splice, batch: Batch, cfg: AblationConfig) -> dict:
    """What ablated nodes are set to for one batch, per submodule and part, broadcastable to (B, T, ...)."""
    return ablation_sources(model, splice, [batch], cfg)[0][1]


def ablation_sources(model: Model, splice: Splice, batches: Sequence[Batch], cfg: AblationConfig, *,
                     reduce: bool = False) -> list[tuple[Batch, dict]]:
    """Each batch (on the model's device) with its ablation values. Means are taken per position over
    *all* the batches' patch prompts of that token length, not batch by batch, so results do not depend
    on ``batch_size``; resampling draws from the batch's own patch prompts. Only what the ablation needs
    is kept: running sums for the mean, one zero row, the permuted activations for resampling. ``reduce``:
    ``batches`` are this rank's share of the pairs, and the means are taken over every rank's."""
    batches = [b.to(model.device) for b in batches]
    g = torch.Generator().manual_seed(cfg.seed)
    sums: dict[int, dict] = {}
    counts: dict[int, int] = {}
    values = []
    for batch in batches:
        store: dict = {}
        with torch.no_grad():
            run(model, batch.patch, splice.capture_edit(store), splice.submodules, logits_to_keep=1)
        if cfg.ablation == "mean":
            acc = sums.setdefault(batch.n_tokens, {})
            for sub, parts in store.items():
                for k, v in parts.items():
                    acc.setdefault(sub, {})[k] = acc.get(sub, {}).get(k, 0) + v.sum(0, keepdim=True)
            counts[batch.n_tokens] = counts.get(batch.n_tokens, 0) + len(batch)
        elif cfg.ablation == "zero":
            values.append({sub: {k: torch.zeros_like(v[:1]) for k, v in p.items()} for sub, p in store.items()})
        else:
            perm = torch.randperm(len(batch), generator=g)
            values.append({sub: {k: v[perm] for k, v in p.items()} for sub, p in store.items()})
    if cfg.ablation == "mean":
        if reduce:
            sums, counts = _sums_across_ranks(sums, counts)
        means = {n: {sub: {k: v / counts[n] for k, v in p.items()} for sub, p in acc.items()}
                 for n, acc in sums.items()}
        return [(b, means[b.n_tokens]) for b in batches]
    return list(zip(batches, values, strict=True))


def _sums_across_ranks(sums: dict, counts: dict) -> tuple[dict, dict]:
    """Per token length, the patch activations' sums and pair counts added up over the ranks (a length some
    rank has no pair of counts as zero there)."""
    flat = {(n, sub, k): v for n, acc in sums.items() for sub, p in acc.items() for k, v in p.items()}
    got = distributed.reduce_sums({**flat, **{("count", n): c for n, c in counts.items()}})
    out: dict = {}
    for key, v in got.items():
        if key[0] != "count":
            out.setdefault(key[0], {}).setdefault(key[1], {})[key[2]] = v
    return out, {key[1]: v for key, v in got.items() if key[0] == "count"}


def check_ranks(cfg: AblationConfig) -> None:
    """Resampling draws from each batch's own patch prompts, which a split over ranks changes."""
    if distributed.world_size() > 1 and cfg.ablation == "resample":
        raise UsageError(f"resample ablation is not split over ranks (it draws from each batch's own pairs, which "
                         f"the split changes); run it in one process, or use mean or zero ablation "
                         f"(this launch has {distributed.world_size()} ranks)")


def inverted(masks: Masks) -> Masks:
    return {s: {k: ~v for k, v in p.items()} for s, p in masks.items()}


def filled(masks: Masks, value: bool) -> Masks:
    return {s: {k: torch.full_like(v, value) for k, v in p.items()} for s, p in masks.items()}


def _ratio(m_c: float, m_empty: float, m_full: float) -> float:
    denom = m_full - m_empty
    return (m_c - m_empty) / denom if abs(denom) > 1e-12 else float("nan")


def _mean_metric(model: Model, splice: Splice, sources: Sequence[tuple[Batch, dict]], cfg: AblationConfig,
                 metric: Metric, node_masks=None, *, reduce: bool = False) -> float:
    """The metric averaged over every example of ``sources`` (``reduce``: of every rank's) with the nodes
    outside ``node_masks(n_tokens)`` ablated, or of the model itself when ``node_masks`` is None."""
    total, n = 0.0, 0
    for batch, source in sources:
        if node_masks is None:
            with torch.no_grad():
                values = metric(run(model, batch.clean, None, [], logits_to_keep=logits_kept(metric)), batch)
        else:
            values = ablated_metric(model, splice, batch, node_masks(batch.n_tokens), cfg, metric, source=source)
        total += float(values.sum())
        n += len(batch)
    if reduce:
        got = distributed.reduce_sums({"total": total, "n": n})
        total, n = got["total"], got["n"]
    return total / n


def evaluate_masks(model: Model, splice: Splice, batches: Sequence[Batch], node_masks, cfg: AblationConfig,
                   metric: Metric = logit_diff, *, reduce: bool = False) -> dict[str, float]:
    """Mean metric over all examples for the circuit, its complement, the empty circuit and the model.

    ``node_masks(n_tokens)`` returns the circuit's masks for prompts of that length; ``reduce``: ``batches``
    are this rank's share of the pairs, the means are over every rank's.
    """
    sources = ablation_sources(model, splice, batches, cfg, reduce=reduce)
    return {name: _mean_metric(model, splice, sources, cfg, metric, fn, reduce=reduce) for name, fn in (
        ("circuit", node_masks), ("complement", lambda n: inverted(node_masks(n))),
        ("empty", lambda n: filled(node_masks(n), False)), ("full", None))}


def evaluate(model: Model, dictionaries: dict | None, circuit: Circuit, task, *,
             config: AblationConfig = AblationConfig(), metric: Metric = logit_diff, n_examples: int | None = 100,
             batch_size: int = 32, split: str = "evaluation") -> Faithfulness:
    """Faithfulness and completeness of ``circuit`` on the first ``n_examples`` pairs of ``task``'s ``split``
    (:mod:`featurecircuits.splits`; by default the evaluation pairs, disjoint from the discovery pairs that
    find circuits). A warning says "in-sample" when they include pairs that found the circuit. Under torchrun
    each rank measures its share of the pairs (:mod:`featurecircuits.distributed`)."""
    circuit.check_model(model)
    ranks = distributed.setup(model.device)
    check_ranks(config)
    splice = Splice(model, dictionaries, circuit.metadata.get("submodules"))
    circuit.check_dictionaries(splice.dictionaries)
    task, used_split = task_split(task, model.tokenizer, split)
    in_sample = warn_in_sample(circuit.metadata.get("found_on"), task, n_examples, "this evaluation") \
        if used_split else 0.0
    batches = as_batches(task, model.tokenizer, n_examples=n_examples, batch_size=batch_size)
    nodes = circuit.node_tuples()
    counted = sum(_counted(model, sub, part, config) for sub, part, _, _ in nodes)
    m = evaluate_masks(model, splice, distributed.shard(batches), lambda t: masks_from_nodes(splice, nodes, t), config,
                       metric, reduce=ranks)
    return Faithfulness(_ratio(m["circuit"], m["empty"], m["full"]), _ratio(m["complement"], m["empty"], m["full"]),
                        m["circuit"], m["complement"], m["empty"], m["full"], counted, circuit.n_edges,
                        asdict(config), used_split, sum(len(b) for b in batches), in_sample,
                        **(rank_metadata(batches) if ranks else {}))


# --------------------------------------------------------------------------------------------------
# Curves


@dataclass
class CurvePoint:
    method: str
    threshold: float
    n_nodes: int
    faithfulness: float
    completeness: float
    random_faithfulness: float | None = None


@dataclass
class Curve:
    points: list[CurvePoint]
    config: dict

    def methods(self) -> list[str]:
        return list(dict.fromkeys(p.method for p in self.points))

    def to_dict(self) -> dict:
        """The points and the settings they were measured with (what ``curve --out`` writes)."""
        return {"points": [asdict(p) for p in self.points], **self.config}

    def series(self, method: str) -> list[CurvePoint]:
        return sorted((p for p in self.points if p.method == method), key=lambda p: p.n_nodes)

    def auc(self, method: str, key: str = "faithfulness") -> float:
        """Mean of ``key`` over log10(number of nodes) (trapezoids), over the method's size range."""
        pts = [p for p in self.series(method) if p.n_nodes > 0]
        if len(pts) < 2:
            return float("nan")
        x = np.log10([p.n_nodes for p in pts])
        y = np.array([getattr(p, key) for p in pts], dtype=float)
        span = x[-1] - x[0]
        return float(np.trapezoid(y, x) / span) if span > 0 else float(y.mean())


def _positions_mask(keep: torch.Tensor, positional: bool, n_tokens: int) -> torch.Tensor:
    """A node mask over (positions[, features]): as it is when nodes keep positions, else the same at every one."""
    return keep if positional else keep.expand(n_tokens, *keep.shape)


def _threshold_masks(splice, scores, threshold: float, n_tokens: int, positional: bool = False) -> Masks:
    masks: Masks = {}
    for sub in splice.submodules:
        masks[sub.name] = {}
        for part in ("act", "err"):
            if (sub.name, part) in scores:
                keep = scores[(sub.name, part)].abs() >= threshold
                masks[sub.name][part] = _positions_mask(keep, positional, n_tokens)
    return masks


def _random_masks(splice, scores, n_nodes: int, n_tokens: int, gen: torch.Generator, positional: bool = False
                  ) -> Masks:
    keys = list(scores)
    sizes = [scores[k].numel() for k in keys]
    chosen = torch.randperm(sum(sizes), generator=gen)[:n_nodes]
    flat = torch.zeros(sum(sizes), dtype=torch.bool)
    flat[chosen] = True
    out: Masks = {}
    for (sub, part), piece in zip(keys, flat.split(sizes), strict=True):
        out.setdefault(sub, {})[part] = _positions_mask(piece.view(scores[(sub, part)].shape), positional, n_tokens)
    return out


def faithfulness_curve(
    model: Model,
    dictionaries: dict | None,
    task,
    *,
    methods: Sequence[str] = ("relp", "ig", "atp"),
    attribution: AttributionConfig | None = None,
    submodules: Sequence[str] | None = None,
    thresholds: Sequence[float] | None = None,
    relative: bool = True,
    config: AblationConfig = AblationConfig(),
    n_examples: int | None = 100,
    batch_size: int = 32,
    metric: Metric = logit_diff,
    random_baseline: bool = True,
    split: str = "evaluation",
    aggregation: str = "auto",
    progress: bool = True,
    checkpoint=None,
    **options,
) -> Curve:
    """Faithfulness and completeness as the node threshold sweeps (``logspace(-4, 0, 15)`` × each method's
    largest |score|, or absolute thresholds with ``relative=False``), per method, with a random circuit of the
    same size as baseline. Nodes keep positions where every prompt has one length (``aggregation="auto"``).
    Only nodes that ``config`` ablates are selected, counted and drawn at random (layers before
    ``start_layer``, the embedding without ``include_embed``, kept errors are given to every circuit, as in
    Sparse Feature Circuits). ``submodules`` (default: those with dictionaries, else all) are the candidates;
    the others are neither selected nor ablated (at component level every resid_l is a cut of the model).
    Every method is scored with ``attribution`` (keyword ``options`` change it), only its method replaced.

    Pairs (:mod:`featurecircuits.splits`): nodes are scored on the first ``n_examples`` discovery pairs, and
    circuits evaluated on the first ``n_examples`` pairs of ``split`` (default the held-out evaluation
    pairs; ``all``: the same pairs, warned about as in-sample). Batches given directly serve both.
    ``checkpoint`` (a :class:`featurecircuits.checkpoint.RunDir`) keeps each method's points and each batch's
    node scores, so an interrupted run resumes where it stopped, with the same result. Under torchrun ranks
    share the pairs (:mod:`featurecircuits.distributed`; each rank draws its own random circuits)."""
    thresholds = list(np.logspace(-4, 0, 15)) if thresholds is None else thresholds
    splice = _curve_splice(model, dictionaries, submodules, config, thresholds)
    base_cfg = (attribution or AttributionConfig()).with_(**options).resolve(model.family.name)
    configs = [base_cfg.with_(method=m) for m in methods]
    score_batches, batches, used_split = _curve_pairs(task, model.tokenizer, split, n_examples, batch_size)
    selection = _Selection(splice, _positional(aggregation, score_batches + batches))
    gen, ranks = torch.Generator().manual_seed(config.seed), distributed.active()  # joined by _curve_splice
    sources = ablation_sources(model, splice, distributed.shard(batches), config, reduce=ranks)
    mean_metric = partial(_mean_metric, model, splice, sources, config, metric, reduce=ranks)
    m_full = mean_metric(None)
    m_empty, points = None, []
    for cfg in configs:
        new, m_empty = _method_points(model, selection, distributed.shard(score_batches), cfg, config, metric,
                                      thresholds, relative=relative, mean_metric=mean_metric, bounds=(m_empty, m_full),
                                      gen=gen if random_baseline else None, checkpoint=checkpoint, reduce=ranks,
                                      progress=progress and distributed.is_main())
        points += new
    return Curve(points, {"ablation": asdict(config), "thresholds": [float(t) for t in thresholds],
                          "relative": relative, "n_examples": sum(len(b) for b in batches), "split": used_split,
                          "n_discovery": sum(len(b) for b in score_batches), "m_full": m_full, "m_empty": m_empty,
                          "attribution": {c.method: c.to_dict() for c in configs},
                          "submodules": [s.name for s in splice.submodules], "task": getattr(task, "name", None),
                          "aggregation": "none" if selection.positional else "sum",
                          **(_curve_ranks(score_batches, batches) if ranks else {})})


@dataclass
class _Selection:
    """Circuits of a curve as node masks: nodes per position (``positional``) or the same at every position."""

    splice: Splice
    positional: bool

    def threshold(self, scores, threshold: float, n_tokens: int) -> Masks:
        return _threshold_masks(self.splice, scores, threshold, n_tokens, self.positional)

    def random(self, scores, n_nodes: int, n_tokens: int, gen: torch.Generator) -> Masks:
        return _random_masks(self.splice, scores, n_nodes, n_tokens, gen, self.positional)


def _positional(aggregation: str, batches: Sequence[Batch]) -> bool:
    from .scoring import check_aggregation

    check_aggregation(aggregation)
    lengths = {b.n_tokens for b in batches}
    if aggregation == "none" and len(lengths) > 1:
        raise ValueError(f"aggregation='none' keeps positions, so every prompt needs one token length; found lengths "
                         f"{sorted(lengths)} (use one template, or aggregation='sum')")
    return aggregation == "none" or (aggregation == "auto" and len(lengths) == 1)


def _curve_pairs(task, tokenizer, split: str, n: int | None, batch_size: int):
    """(batches that score nodes, batches that evaluate circuits, the evaluation split): the discovery pairs
    and ``split``'s (both ``all`` for ``all``), warning when they overlap; batches given directly serve both."""
    checked, used_split = task_split(task, tokenizer, split)
    found = task
    if used_split is not None:
        found, _ = task_split(task, tokenizer, "all" if split == "all" else "discovery")
        warn_in_sample(record(found, n, "discovery" if split != "all" else "all"), checked, n, "this curve")
    return (as_batches(found, tokenizer, n_examples=n, batch_size=batch_size),
            as_batches(checked, tokenizer, n_examples=n, batch_size=batch_size), used_split)


def _curve_splice(model, dictionaries, submodules, config: AblationConfig, thresholds) -> Splice:
    """The curve's splice, after checking the thresholds and that the config ablates something."""
    for t in thresholds:
        check_threshold("threshold", t)
    splice = Splice(model, dictionaries, submodules, sparse=True)
    distributed.setup(model.device)
    check_ranks(config)
    if not any(_ablatable(sub, config) for sub in splice.submodules):
        raise ValueError(f"no submodule is ablated with start_layer={config.start_layer} and "
                         f"include_embed={config.include_embed}; nothing to select")
    return splice


def _curve_ranks(score_batches: Sequence[Batch], batches: Sequence[Batch]) -> dict:
    """A curve's record of its ranks: pairs per rank, of the evaluation pairs and of the discovery pairs."""
    return {**rank_metadata(batches), "discovery_ranks": rank_metadata(score_batches)["ranks"]}


def _method_points(model, selection, batches, cfg, config, metric, thresholds, *, relative, mean_metric, bounds, gen,
                   progress, checkpoint, reduce=False) -> tuple[list[CurvePoint], float]:
    """One method's points along the sweep (read back from ``checkpoint`` when an earlier run finished
    them: on every rank, else all compute them again), and m(∅) (computed with the first method's node set
    when not known yet)."""
    m_empty, m_full = bounds
    unit = f"curve-{cfg.method}"
    if all(distributed.gather(checkpoint is not None and unit in checkpoint)):  # from an interrupted run
        saved = checkpoint.load(unit)
        if gen is not None:
            gen.set_state(saved["generator"])
        return [CurvePoint(**p) for p in saved["points"]], saved["m_empty"]
    means = score_nodes(model, selection.splice, batches, cfg, metric, memory_budget=0, progress=progress,
                        checkpoint=checkpoint, unit=f"nodes-{cfg.method}", reduce=reduce,
                        aggregation="none" if selection.positional else "sum").means
    scores = {k: v for k, v in means.items() if _counted(model, *k, config)}
    if m_empty is None:
        m_empty = mean_metric(lambda n: filled(selection.threshold(scores, 0, n), False))
    top = max(float(t.abs().max()) for t in scores.values())
    points = [_curve_point(cfg.method, selection, scores, thr * top if relative else thr, mean_metric,
                           (m_empty, m_full), gen)
              for thr in tqdm(thresholds, desc=f"curve {cfg.method}", disable=not progress)]
    if checkpoint is not None:
        checkpoint.save(unit, {"points": [asdict(p) for p in points], "m_empty": m_empty,
                               "generator": (gen or torch.Generator()).get_state()})
    return points, m_empty


def _curve_point(method, selection, scores, absolute: float, mean_metric, bounds, gen) -> CurvePoint:
    """One point: the circuit of nodes with |score| ≥ ``absolute``, its complement and (with ``gen``) a
    random circuit of the same size; ``bounds`` = (m(∅), m(M))."""
    m_empty, m_full = bounds
    n_nodes = int(sum(int((t.abs() >= absolute).sum()) for t in scores.values()))
    m_c = mean_metric(lambda n: selection.threshold(scores, absolute, n))
    m_comp = mean_metric(lambda n: inverted(selection.threshold(scores, absolute, n)))
    rand = None
    if gen is not None:
        rand = _ratio(mean_metric(lambda n: selection.random(scores, n_nodes, n, gen)), m_empty, m_full)
    return CurvePoint(method, float(absolute), n_nodes, _ratio(m_c, m_empty, m_full), _ratio(m_comp, m_empty, m_full),
                      rand)

__all__ = ["AblationConfig", "Curve", "CurvePoint", "Faithfulness", "evaluate", "faithfulness_curve",
           "masks_from_nodes"]
