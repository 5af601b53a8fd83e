"""Circuits: a networkx graph of nodes (features, error terms, components) and weighted edges.

Node ids are stable and readable: ``resid_3/f1234`` (feature 1234 of resid_3's dictionary),
``mlp_2/err`` (its error term), ``attn_1`` (a component, no dictionary), each with ``@5`` when positions
are kept, and ``logit`` for the metric. Circuits are saved as versioned JSON.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import networkx as nx
import torch
from tqdm.auto import tqdm

from .attribution import attribute
from .data import Batch, Metric, logit_diff
from .edges import Node, score_edges
from .fileio import atomic_write_text
from .lrp import LRPConfig
from .models import Model
from .splice import Splice

log = logging.getLogger(__name__)

SCHEMA = "featurecircuits.circuit"
SCHEMA_VERSION = 1
METRIC_NODE = "logit"
Aggregation = Literal["sum", "none"]
_ID = re.compile(r"^(?P<sub>[a-z]+(?:_\d+)?)(?:/(?P<part>err|f(?P<feat>\d+)))?(?:@(?P<pos>\d+))?$")


def node_id(node: Node) -> str:
    sub, part, feat, pos = node
    name = f"{sub}/err" if part == "err" else f"{sub}/f{feat}" if feat is not None else sub
    return name if pos is None else f"{name}@{pos}"


def parse_node_id(text: str) -> Node:
    m = _ID.match(text)
    if not m:
        raise ValueError(f"malformed node id {text!r} (expected e.g. 'resid_3/f12', 'mlp_0/err@4', 'attn_1')")
    part = "err" if m["part"] == "err" else "act"
    feat = int(m["feat"]) if m["feat"] is not None else None
    pos = int(m["pos"]) if m["pos"] is not None else None
    return m["sub"], part, feat, pos


def _check_threshold(name: str, value) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")


@dataclass
class Circuit:
    graph: nx.DiGraph
    metadata: dict

    # -- views ------------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        """Node ids, the metric node excluded."""
        return [n for n in self.graph.nodes if n != METRIC_NODE]

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        return self.graph.number_of_edges()

    def node_tuples(self) -> set[Node]:
        return {parse_node_id(n) for n in self.nodes}

    def score(self, node: str) -> float:
        return self.graph.nodes[node]["score"]

    def top(self, k: int) -> list[str]:
        return sorted(self.nodes, key=lambda n: -abs(self.score(n)))[:k]

    # -- pruning ----------------------------------------------------------------------------------
    def prune(self, *, node_threshold: float | None = None, edge_threshold: float | None = None,
              top_k: int | None = None) -> Circuit:
        """A smaller circuit: nodes with |score| ≥ node_threshold (or the top_k), edges with
        |weight| ≥ edge_threshold among them."""
        _check_threshold("node_threshold", node_threshold)
        _check_threshold("edge_threshold", edge_threshold)
        keep = set(self.nodes)
        if node_threshold is not None:
            keep = {n for n in keep if abs(self.score(n)) >= node_threshold}
        if top_k is not None:
            if not isinstance(top_k, int) or top_k < 0:
                raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
            keep &= set(self.top(top_k))
        g = self.graph.subgraph(keep | {METRIC_NODE}).copy()
        if edge_threshold is not None:
            g.remove_edges_from([(u, v) for u, v, w in g.edges(data="weight") if abs(w) < edge_threshold])
        meta = dict(self.metadata)
        for key, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold),
                           ("top_k", top_k)):
            if value is not None:
                meta[key] = value
        return Circuit(g, meta)

    # -- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        nodes = [{"id": n, **self.graph.nodes[n]} for n in self.graph.nodes]
        edges = [{"source": u, "target": v, "weight": w} for u, v, w in self.graph.edges(data="weight")]
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, "metadata": self.metadata, "nodes": nodes,
                "edges": edges}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1, sort_keys=False)
        if path is not None:
            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict, *, model: Model | None = None) -> Circuit:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a featurecircuits circuit (schema {data.get('schema')!r})")
        if data.get("version") != SCHEMA_VERSION:
            raise ValueError(f"circuit schema version {data.get('version')!r} is not supported; this "
                             f"featurecircuits reads version {SCHEMA_VERSION}")
        g = nx.DiGraph()
        for node in data["nodes"]:
            attrs = {k: v for k, v in node.items() if k != "id"}
            if node["id"] != METRIC_NODE:
                parse_node_id(node["id"])
            g.add_node(node["id"], **attrs)
        for e in data["edges"]:
            for end in (e["source"], e["target"]):
                if end not in g:
                    raise ValueError(f"edge refers to unknown node {end!r}")
            g.add_edge(e["source"], e["target"], weight=e["weight"])
        circuit = cls(g, data.get("metadata", {}))
        if model is not None:
            circuit.check_model(model)
        return circuit

    @classmethod
    def from_json(cls, source: str | Path, *, model: Model | None = None) -> Circuit:
        """Read a circuit from a file path (or a JSON string); with ``model``, check it belongs to it."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"circuit file {path} does not exist")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"circuit file is not valid JSON ({exc.msg})") from exc
        return cls.from_dict(data, model=model)

    def check_model(self, model: Model) -> None:
        meta = self.metadata
        theirs = (meta.get("family"), meta.get("n_layers"), meta.get("d_model"))
        ours = (model.family.name, model.n_layers, model.d_model)
        if theirs != ours:
            raise ValueError(f"this circuit was found on another model ({meta.get('model')!r}: family, layers, "
                             f"width = {theirs}); the given model has {ours}")
        for n in self.nodes:
            model.submodule(parse_node_id(n)[0])  # raises, listing the valid submodules


def _as_batches(model: Model, task, n_examples: int | None, batch_size: int) -> list[Batch]:
    from .tasks import Task, load_task

    if isinstance(task, Batch):
        return [task]
    if isinstance(task, (str, Path)):
        task = load_task(task, model.tokenizer)
    if isinstance(task, Task):
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer; pass Batches instead of a task")
        return task.batches(model.tokenizer, batch_size, n=n_examples)
    batches = list(task)
    if not batches or not all(isinstance(b, Batch) for b in batches):
        raise ValueError("task must be a Task, a JSONL path, a Batch or a list of Batches")
    return batches


def _node_scores(res, aggregation: str) -> dict[Node, torch.Tensor]:
    """Per-node score summed over the batch's examples (and positions when aggregating)."""
    out: dict[Node, torch.Tensor] = {}
    for sub in res.submodules:
        s = res.scores[sub].sum(0)  # (T,) or (T, F)
        parts = [("act", s)] + ([("err", res.error_scores[sub].sum(0))] if sub in res.error_scores else [])
        for part, t in parts:
            if aggregation == "sum":
                t = t.sum(0)
            out[(sub, part)] = t
    return out


RESULT_MEMORY_BUDGET = 2 * 2**30  # bytes of per-batch attribution results kept for edge scoring


def _result_bytes(res) -> int:
    tensors = [t for group in (res.deltas, res.coefficients, res.activations) for parts in group.values()
               for t in parts.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _top_contexts(model: Model, results, nodes: list[Node], k: int = 3, width: int = 4) -> dict[Node, list[str]]:
    """For each feature node, the clean-prompt contexts (last ``width`` tokens) where it is most active."""
    out = {}
    for node in nodes:
        sub, _, feat, pos = node
        found = []
        for batch, res in results:
            acts = res.activations[sub]["act"][..., feat]  # (B, T)
            if pos is not None:
                acts = torch.where(torch.arange(acts.shape[1]) == pos, acts, torch.zeros_like(acts))
            ids = batch.clean if res.direction == "noising" else batch.patch
            for value, flat in zip(*acts.flatten().topk(min(k, acts.numel())), strict=True):
                b, t = divmod(int(flat), acts.shape[1])
                found.append((float(value), ids[b, max(0, t - width + 1):t + 1].tolist()))
        found.sort(key=lambda x: -x[0])
        texts = []
        for value, ids in found[:k]:
            if value <= 0:
                break
            toks = model.tokenizer.convert_ids_to_tokens(ids)
            texts.append(" ".join(toks[:-1] + [f"[{toks[-1]}]"]) + f" ({value:.2f})")
        out[node] = texts
    return out


def discover(
    model: Model,
    dictionaries: dict | None,
    task,
    *,
    method: str = "relp",
    node_threshold: float = 0.1,
    edge_threshold: float = 0.01,
    top_k: int | None = None,
    aggregation: Aggregation = "sum",
    n_examples: int | None = 100,
    batch_size: int = 32,
    ig_steps: int = 10,
    direction: str = "noising",
    lrp: LRPConfig | None = None,
    metric: Metric = logit_diff,
    submodules: Sequence[str] | None = None,
    edges: bool = True,
    progress: bool = False,
) -> Circuit:
    """Score nodes with ``method``, keep those with |mean score| ≥ ``node_threshold`` (or the ``top_k``),
    score edges among them, keep edges with |weight| ≥ ``edge_threshold``."""
    _check_threshold("node_threshold", node_threshold)
    _check_threshold("edge_threshold", edge_threshold)
    if aggregation not in get_args(Aggregation):
        raise ValueError(f"unknown aggregation {aggregation!r}; valid: {', '.join(get_args(Aggregation))}")
    batches = _as_batches(model, task, n_examples, batch_size)
    lengths = sorted({b.n_tokens for b in batches})
    if aggregation == "none" and len(lengths) > 1:
        raise ValueError(f"aggregation='none' keeps positions, so every prompt needs one token length; "
                         f"found lengths {lengths} (use one template, or aggregation='sum')")
    splice = Splice(model, dictionaries, submodules)
    total = sum(len(b) for b in batches)
    sums: dict[tuple[str, str], torch.Tensor] = {}
    act_sums: dict[str, torch.Tensor] = {}
    results = []
    m_base = m_src = 0.0

    def run_attribution(batch):
        return attribute(model, batch, method=method, dictionaries=splice.dictionaries,
                         submodules=[s.name for s in splice.submodules], metric=metric, direction=direction,
                         lrp=lrp, ig_steps=ig_steps)

    keep_results = True
    for batch in tqdm(batches, desc=f"{method} nodes", disable=not progress):
        res = run_attribution(batch)
        if keep_results and _result_bytes(res) * len(batches) > RESULT_MEMORY_BUDGET:
            keep_results = False  # edges will recompute each batch's attribution instead
            results = [(b, None) for b, _ in results]
        for key, t in _node_scores(res, aggregation).items():
            sums[key] = sums.get(key, 0) + t
        for sub, acts in res.activations.items():  # mean feature activation per example and position
            if splice.has_features(model.submodule(sub)):
                act_sums[sub] = act_sums.get(sub, 0) + acts["act"].sum((0, 1)) / batch.n_tokens
        m_base += float(res.metric_base.sum())
        m_src += float(res.metric_source.sum())
        results.append((batch, res if keep_results else None))
    # node selection
    scores: dict[Node, float] = {}
    for (sub, part), t in sums.items():
        mean = t / total
        if part == "act" and splice.has_features(model.submodule(sub)):
            idx = (mean.abs() >= node_threshold).nonzero().tolist() if top_k is None else mean.nonzero().tolist()
            for ix in idx:
                feat, pos = (ix[-1], ix[0] if aggregation == "none" else None)
                scores[(sub, "act", feat, pos)] = float(mean[tuple(ix)])
        else:
            if aggregation == "sum":
                scores[(sub, part, None, None)] = float(mean)
            else:
                for pos, v in enumerate(mean.tolist()):
                    scores[(sub, part, None, pos)] = v
    if top_k is not None:
        scores = dict(sorted(scores.items(), key=lambda kv: -abs(kv[1]))[:top_k])
    else:
        scores = {k: v for k, v in scores.items() if abs(v) >= node_threshold}
    # edges
    weights: dict[tuple[Node, Node], float] = {}
    if edges and scores:
        for batch, res in tqdm(results, desc="edges", disable=not progress):
            res = res if res is not None else run_attribution(batch)
            for key, w in score_edges(model, splice, batch.to(model.device), res, list(scores)).weights.items():
                weights[key] = weights.get(key, 0.0) + w
    if not keep_results and results:  # hover contexts come from the first batch then
        results[0] = (results[0][0], results[0][1] or run_attribution(results[0][0]))
    kept = [r for r in results if r[1] is not None]
    contexts = _top_contexts(model, kept, [n for n in scores if n[2] is not None]) if model.tokenizer else {}
    graph = nx.DiGraph()
    graph.add_node(METRIC_NODE, kind="metric", score=(m_src - m_base) / total, submodule=None, layer=None,
                   position=None, feature=None)
    for node, s in scores.items():
        sub, part, feat, pos = node
        sm = model.submodule(sub)
        kind = "error" if part == "err" else "feature" if feat is not None else "component"
        mean_act = None
        if kind == "feature":
            mean_act = float(act_sums[sub][feat] / total)
        graph.add_node(node_id(node), score=s, kind=kind, submodule=sub, layer=sm.layer, position=pos,
                       feature=feat, mean_activation=mean_act, top_contexts=contexts.get(node))
    last = splice.submodules[-1].name
    for node, s in scores.items():
        if node[0] == last and abs(s) >= edge_threshold:
            graph.add_edge(node_id(node), METRIC_NODE, weight=s)
    for (u, d), w in weights.items():
        w /= total
        if abs(w) >= edge_threshold:
            graph.add_edge(node_id(u), node_id(d), weight=w)
    meta = {
        "model": model.name, "family": model.family.name, "n_layers": model.n_layers, "d_model": model.d_model,
        "method": method, "direction": direction, "aggregation": aggregation, "node_threshold": node_threshold,
        "edge_threshold": edge_threshold, "top_k": top_k, "n_examples": total, "token_lengths": lengths,
        "ig_steps": ig_steps if method == "ig" else None, "submodules": [s.name for s in splice.submodules],
        "dictionary_sizes": {k: int(v.dict_size) for k, v in splice.dictionaries.items()},
        "metric": getattr(metric, "__name__", "custom"), "metric_base": m_base / total,
        "metric_source": m_src / total,  # base = clean when noising, patch when denoising
        "lrp": (lrp.__dict__ if lrp else None) if method == "relp" else None,
    }
    return Circuit(graph, meta)
