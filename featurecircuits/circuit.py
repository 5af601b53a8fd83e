"""Circuits: a networkx graph of nodes (features, error terms, components) and weighted edges.

Node ids are stable and readable: ``resid_3/f1234`` (feature 1234 of resid_3's dictionary),
``mlp_2/err`` (its error term), ``attn_1`` (a component, no dictionary), each with ``@5`` when positions
are kept, and ``logit`` for the metric. Circuits are saved as versioned JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import torch
from tqdm.auto import tqdm

from . import distributed
from .attribution import attribute_splice
from .config import AttributionConfig
from .data import Batch, Metric, logit_diff
from .dictionaries.spec import spec_of
from .edges import score_edges
from .fileio import atomic_write_text
from .models import Model
from .nodes import METRIC_NODE, NodeRef, node_id
from .scoring import (
    RESULT_MEMORY_BUDGET,
    Aggregation,
    Node,
    NodeScores,
    check_aggregation,
    check_threshold,
    score_nodes,
    select_nodes,
)
from .sparse import column
from .splice import Splice
from .splits import record, task_split
from .tasks import FIELDS, Task, as_batches

log = logging.getLogger(__name__)

SCHEMA = "featurecircuits.circuit"
SCHEMA_VERSION = 1
DEFAULT_NODE_THRESHOLD = 0.1  # discover's, where neither a threshold nor a top-k is given


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

    def node_tuples(self) -> set[NodeRef]:
        return {self.ref(n) for n in self.nodes}

    def ref(self, node: str) -> NodeRef:
        """What a node is (submodule, part, feature, position), parsed from its id."""
        return NodeRef.parse(node)

    @property
    def edges(self) -> list[tuple[str, str, float]]:
        """``(source, target, weight)`` of every edge (the JSON's ``edges``)."""
        return list(self.graph.edges(data="weight"))

    def score(self, node: str) -> float:
        """The node's score: the method's estimate of how the metric changes when the node is patched (under
        noising: set to its value on the patch prompt, in the clean run; see :attr:`sign`)."""
        return self.graph.nodes[node]["score"]

    @property
    def sign(self) -> int:
        """+1 or −1 such that ``sign × score`` is positive for a node that pushes the metric toward the clean
        answer: under noising a node that supports the clean answer loses it when patched (score < 0)."""
        return -1 if self.metadata.get("direction", "noising") == "noising" else 1

    def effect(self, node: str) -> float:
        """How much the node pushes the metric toward the clean answer (``sign × score``): the one sign
        convention of every page and export, whatever the direction."""
        return self.sign * self.score(node)

    def label(self, node: str) -> str | None:
        """The node's label (a dossier's or a user's, else the token its feature fires on most)."""
        attrs = self.graph.nodes[node]
        if attrs.get("label"):
            return attrs["label"]
        first = str((attrs.get("top_contexts") or [""])[0])
        start = first.rfind("[")
        return first[start + 1:first.index("]", start)] if start >= 0 and "]" in first[start:] else None

    def summed(self) -> Circuit:
        """The circuit with positions summed: one node per (submodule, feature or error), scores and edge
        weights added over positions (a view of a positional circuit; itself when already summed)."""
        if self.metadata.get("aggregation") != "none":
            return self
        g = nx.DiGraph()
        g.add_node(METRIC_NODE, **self.graph.nodes[METRIC_NODE])
        for n in self.nodes:
            key = self.ref(n).summed().id
            if key in g:
                g.nodes[key]["score"] += self.score(n)
            else:
                g.add_node(key, **{**self.graph.nodes[n], "position": None})
        for u, v, w in self.edges:
            su, sv = (x if x == METRIC_NODE else self.ref(x).summed().id for x in (u, v))
            g.add_edge(su, sv, weight=g.edges[su, sv]["weight"] + w if g.has_edge(su, sv) else w)
        return Circuit(g, {**self.metadata, "aggregation": "sum", "summed_from": "none"})

    def to_html(self, path: str | Path, *, title: str | None = None, evaluation=None, **options) -> Path:
        """This circuit as one self-contained interactive page (see :func:`featurecircuits.plots.circuits_page`)."""
        from .plots import circuits_page

        name = title or f"{self.metadata.get('method', 'circuit')} circuit"
        return circuits_page({name: self}, path, title=name,
                             evaluations={name: evaluation} if evaluation is not None else None, **options)

    def top(self, k: int) -> list[str]:
        return sorted(self.nodes, key=lambda n: -abs(self.score(n)))[:k]

    # -- pruning ----------------------------------------------------------------------------------
    def prune(self, *, node_threshold: float | None = None, edge_threshold: float | None = None,
              top_k: int | None = None) -> Circuit:
        """A smaller circuit: nodes with |score| ≥ node_threshold (or the top_k), edges with
        |weight| ≥ edge_threshold among them."""
        check_threshold("node_threshold", node_threshold)
        check_threshold("edge_threshold", edge_threshold)
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
        """The circuit as JSON text (written to ``path`` when given); a ValueError naming the field where a
        number is NaN or infinite (strict JSON has neither, and nothing is written)."""
        from .schemas import finite_json

        text = finite_json(self.to_dict(), f"circuit {path or ''}".strip(), indent=1, sort_keys=False)
        if path is not None:
            atomic_write_text(Path(path), text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict, *, model: Model | None = None, where: str = "circuit") -> Circuit:
        """A circuit from its JSON object, validated against the schema (``featurecircuits.schemas``); errors
        name ``where`` and the JSON path."""
        from .errors import UsageError
        from .schemas import validate_circuit

        validate_circuit(data, where, schema=SCHEMA, version=SCHEMA_VERSION)
        g = nx.DiGraph()
        for i, node in enumerate(data["nodes"]):
            attrs = {k: v for k, v in node.items() if k != "id"}
            if node["id"] != METRIC_NODE:
                try:
                    NodeRef.parse(node["id"])
                except ValueError as exc:
                    raise UsageError(f"{where}: $.nodes[{i}].id: {exc}") from None
            if node["id"] in g:
                raise UsageError(f"{where}: $.nodes[{i}].id: node {node['id']!r} is listed twice")
            g.add_node(node["id"], **attrs)
        seen: dict[tuple[str, str], int] = {}
        for i, e in enumerate(data["edges"]):
            for end in ("source", "target"):
                if e[end] not in g:
                    raise UsageError(f"{where}: $.edges[{i}].{end}: edge refers to unknown node {e[end]!r}")
            pair = (e["source"], e["target"])
            if pair[0] == pair[1]:
                raise UsageError(f"{where}: $.edges[{i}]: edge from {pair[0]!r} to itself; a circuit has no self-loops")
            if pair in seen:
                raise UsageError(f"{where}: $.edges[{i}]: edge {pair[0]!r} → {pair[1]!r} is listed twice (also "
                                 f"$.edges[{seen[pair]}]); give each edge once, with its one weight")
            seen[pair] = i
            g.add_edge(*pair, weight=e["weight"])
        circuit = cls(g, data.get("metadata", {}))
        if model is not None:
            try:
                circuit.check_model(model)
            except ValueError as exc:
                raise UsageError(f"{where}: {exc}") from None
        return circuit

    @classmethod
    def from_json(cls, source: str | Path, *, model: Model | None = None) -> Circuit:
        """Read a circuit from a file path (or a JSON string); with ``model``, check it belongs to it."""
        from .schemas import parse_json, read_text

        text, where = str(source), "circuit JSON"
        if not text.lstrip().startswith("{"):
            text, where = read_text(Path(source), "circuit file"), str(source)
        return cls.from_dict(parse_json(text, where), model=model, where=where)

    def check_model(self, model: Model) -> None:
        meta = self.metadata
        theirs = (meta.get("family"), meta.get("n_layers"), meta.get("d_model"))
        ours = (model.family.name, model.n_layers, model.d_model)
        if theirs != ours:
            raise ValueError(f"this circuit was found on another model ({meta.get('model')!r}: family, layers, "
                             f"width = {theirs}); the given model has {ours}")
        for n in self.nodes:
            model.submodule(NodeRef.parse(n).submodule)  # raises, listing the valid submodules

    def check_dictionaries(self, dictionaries: dict) -> None:
        """Raise when ``dictionaries`` are not the ones this circuit was found with (compared by the hash of
        their weights, so the same dictionary in another file format passes)."""
        recorded = self.metadata.get("dictionary_sources")
        if recorded is None:  # circuits written before sources were recorded
            return
        for sub, src in recorded.items():
            ae = dictionaries.get(sub)
            if ae is None:
                raise ValueError(f"this circuit was found with a dictionary for {sub} ({src['format']}: "
                                 f"{src['path']}), but none is given for it")
            if ae.source.hash != src["hash"]:
                raise ValueError(f"the dictionary given for {sub} ({ae.source.format}: {ae.source.path}, weights "
                                 f"{ae.source.hash}) is not the one this circuit was found with "
                                 f"({src['format']}: {src['path']}, weights {src['hash']})")


def _check_lengths(batches: list[Batch], aggregation: str) -> tuple[list[int], str]:
    """The prompts' token lengths, and the aggregation: ``auto`` keeps positions where there is one length."""
    lengths = sorted({b.n_tokens for b in batches})
    if aggregation == "auto":
        aggregation = "none" if len(lengths) == 1 else "sum"
    if aggregation == "none" and len(lengths) > 1:
        raise ValueError(f"aggregation='none' keeps positions, so every prompt needs one token length; "
                         f"found lengths {lengths} (use one template, or aggregation='sum')")
    return lengths, aggregation


def _context_candidates(results, nodes: list[Node], k: int = 3, width: int = 4
                        ) -> dict[Node, list[tuple[float, list[int]]]]:
    """For each feature node, the ``k`` base-prompt contexts (token ids of the last ``width`` tokens) where it is
    most active, with the activation, largest first."""
    out = {}
    for node in nodes:
        sub, _, feat, pos = node
        found = []
        for batch, res in results:
            acts = column(res.activations[sub]["act"], feat)  # (B, T)
            if pos is not None:
                acts = torch.where(torch.arange(acts.shape[1]) == pos, acts, torch.zeros_like(acts))
            ids, _ = batch.roles(res.direction)
            for value, flat in zip(*acts.flatten().topk(min(k, acts.numel())), strict=True):
                b, t = divmod(int(flat), acts.shape[1])
                found.append((float(value), ids[b, max(0, t - width + 1):t + 1].tolist()))
        found.sort(key=lambda x: -x[0])  # stable: ties stay in pair order
        out[node] = found[:k]
    return out


def _context_texts(model: Model, found: list[tuple[float, list[int]]]) -> list[str]:
    texts = []
    for value, ids in found:
        if value <= 0:
            break
        toks = model.tokenizer.convert_ids_to_tokens(ids)
        texts.append(" ".join(toks[:-1] + [f"[{toks[-1]}]"]) + f" ({value:.2f})")
    return texts


def score_circuit_edges(model: Model, splice: Splice, scores: NodeScores, nodes: dict[Node, float],
                        config: AttributionConfig, metric: Metric, *, progress: bool = False, reduce: bool = False
                        ) -> dict[tuple[Node, Node], float]:
    """Edge weights among ``nodes``, averaged over the examples (batches whose attribution was not kept
    are attributed again); ``reduce``: ``scores.results`` are this rank's pairs, whose sums are added up over
    the ranks (``nodes`` must be the same on every rank: selected from reduced scores)."""
    weights: dict[tuple[Node, Node], float] = {}
    for batch, res in tqdm(scores.results, desc="edges", disable=not progress):
        if res is None:
            res = attribute_splice(model, splice, batch, config, metric)
        for key, w in score_edges(model, splice, batch.to(model.device), res, list(nodes)).weights.items():
            weights[key] = weights.get(key, 0.0) + w
    if reduce:
        weights = distributed.reduce_sums(weights)
    return {k: w / scores.n_examples for k, w in weights.items()}


def build_graph(model: Model, splice: Splice, scores: NodeScores, nodes: dict[Node, float],
                weights: dict[tuple[Node, Node], float], edge_threshold: float, contexts: dict) -> nx.DiGraph:
    """Nodes with their attributes, edges with |weight| ≥ ``edge_threshold``, the metric node on top (fed by
    the last submodule's nodes, with their scores as weights)."""
    graph = nx.DiGraph()
    graph.add_node(METRIC_NODE, kind="metric", score=scores.metric_source - scores.metric_base, submodule=None,
                   layer=None, position=None, feature=None)
    for node, s in nodes.items():
        ref = NodeRef(*node)
        mean_act = float(scores.mean_activations[ref.submodule][ref.feature]) if ref.kind == "feature" else None
        graph.add_node(ref.id, score=s, kind=ref.kind, submodule=ref.submodule,
                       layer=model.submodule(ref.submodule).layer, position=ref.position, feature=ref.feature,
                       mean_activation=mean_act, top_contexts=contexts.get(node))
    last = splice.submodules[-1].name
    for node, s in nodes.items():
        if node[0] == last and abs(s) >= edge_threshold:
            graph.add_edge(node_id(node), METRIC_NODE, weight=s)
    for (u, d), w in weights.items():
        if abs(w) >= edge_threshold:
            graph.add_edge(node_id(u), node_id(d), weight=w)
    return graph


def _hover_contexts(model: Model, splice: Splice, scores: NodeScores, nodes, config, metric, *, reduce: bool = False,
                    first: Batch | None = None, k: int = 3) -> dict:
    """Top contexts of the feature nodes, from the kept results (or the ``first`` batch, attributed again);
    ``reduce``: each rank's candidates merged, in rank (so pair) order, and the first batch rank 0's to do."""
    if model.tokenizer is None or not scores.results:
        return {}
    kept = [r for r in scores.results if r[1] is not None]
    if reduce and not all(distributed.gather(bool(kept))):
        kept = []  # as in one process over its memory budget: the first batch alone
    if not kept and (not reduce or distributed.is_main()):
        batch = first if first is not None else scores.results[0][0]
        kept = [(batch, attribute_splice(model, splice, batch, config, metric))]
    found = _context_candidates(kept, [n for n in nodes if n[2] is not None], k)
    if reduce:
        every = distributed.gather(found)
        found = {node: sorted((c for part in every for c in part[node]), key=lambda x: -x[0])[:k] for node in found}
    return {node: _context_texts(model, f) for node, f in found.items()}


def task_record(task) -> dict | None:
    """What a circuit records of the task it was found on (enough to rebuild its examples)."""
    if isinstance(task, Task):
        return {"name": task.name, **task.source}
    if isinstance(task, (str, Path)):
        return {"name": Path(task).stem, "file": str(task)}
    return None


def circuit_metadata(model: Model, splice: Splice, config: AttributionConfig, scores: NodeScores, *, task,
                     aggregation, node_threshold, edge_threshold, top_k, lengths, metric, found_on=None) -> dict:
    return {
        "model": model.name, "family": model.family.name, "n_layers": model.n_layers, "d_model": model.d_model,
        "method": config.method, "direction": config.direction, "config": config.to_dict(),
        "aggregation": aggregation, "node_threshold": node_threshold, "edge_threshold": edge_threshold,
        "top_k": top_k, "task": task_record(task), "n_examples": scores.n_examples, "token_lengths": lengths,
        "submodules": [s.name for s in splice.submodules],
        "dictionaries": spec_of(splice.dictionaries),  # the spec that loads them again (None: built in memory)
        "dictionary_sizes": {k: v.width for k, v in splice.dictionaries.items()},
        "dictionary_sources": {k: v.source.to_dict() for k, v in splice.dictionaries.items()},
        "metric": getattr(metric, "__name__", "custom"), "metric_base": scores.metric_base,
        "metric_source": scores.metric_source,  # base = clean when noising, patch when denoising
        "found_on": found_on,  # the split and pair ids that found it (None: batches given directly)
    }


def _find(model: Model, splice: Splice, batches: list[Batch], cfg: AttributionConfig, metric: Metric, *,
          ranks: bool, selection: tuple, edges: bool, aggregation: str, memory_budget: int, checkpoint, progress: bool,
          first: Batch | None):
    """Node scores, the selected nodes, edge weights among them and hover contexts (``ranks``: ``batches`` are
    this rank's share, every sum reduced over the ranks; ``first``: the run's first batch)."""
    threshold, top_k = selection
    scores = score_nodes(model, splice, batches, cfg, metric, aggregation=aggregation, memory_budget=memory_budget,
                         progress=progress, checkpoint=checkpoint, reduce=ranks)
    nodes = select_nodes(scores, splice, threshold=threshold, top_k=top_k)  # reduced scores: the same on every rank
    weights = score_circuit_edges(model, splice, scores, nodes, cfg, metric, progress=progress, reduce=ranks) \
        if edges and nodes else {}
    return scores, nodes, weights, _hover_contexts(model, splice, scores, nodes, cfg, metric, reduce=ranks,
                                                   first=first)


def rank_metadata(batches: Sequence[Batch]) -> dict:
    """What a run over several ranks records: their number and each one's share of the pairs."""
    return {"world_size": distributed.world_size(), "ranks": distributed.shares(sum(len(b) for b in batches))}


def discover(
    model: Model,
    dictionaries: dict | None,
    task,
    *,
    config: AttributionConfig | None = None,
    node_threshold: float | None = None,
    edge_threshold: float = 0.01,
    top_k: int | None = None,
    aggregation: Aggregation = "auto",
    n_examples: int | None = 100,
    batch_size: int = 32,
    metric: Metric = logit_diff,
    submodules: Sequence[str] | None = None,
    edges: bool = True,
    memory_budget: int = RESULT_MEMORY_BUDGET,
    split: str = "discovery",
    progress: bool = True,
    checkpoint=None,
    **options,
) -> Circuit:
    """Score nodes (``config``, or keyword ``options`` such as ``method="ig"``), keep those with |mean score|
    ≥ ``node_threshold`` (default 0.1), or the ``top_k`` largest, or (both given) the ``top_k`` largest of those
    ≥ ``node_threshold``; score edges among them and keep those with |weight| ≥ ``edge_threshold``. The
    metadata records the threshold and top-k that were applied (``node_threshold`` None: none was).
    ``aggregation``: ``none`` keeps one node per position, ``sum`` sums node scores over positions, ``auto``
    (default) keeps positions where every prompt has one token length.
    Per-batch attributions are kept for edges up to ``memory_budget`` bytes.
    ``checkpoint``: a :class:`featurecircuits.checkpoint.RunDir` keeping each batch's node scores. Under torchrun
    each rank scores its share of the pairs (:mod:`featurecircuits.distributed`; metadata ``world_size``, ``ranks``).

    A task (or JSONL path) contributes its first ``n_examples`` pairs of ``split`` (:mod:`featurecircuits.splits`:
    the discovery pairs by default, so that the evaluation pairs stay held out); the circuit records which
    (metadata ``found_on``). Batches given directly are used as they are."""
    cfg = (config or AttributionConfig()).with_(**options).resolve(model.family.name)
    if node_threshold is None and top_k is None:
        node_threshold = DEFAULT_NODE_THRESHOLD
    check_threshold("node_threshold", node_threshold)
    check_threshold("edge_threshold", edge_threshold)
    check_aggregation(aggregation)
    task, used_split = task_split(task, model.tokenizer, split)
    found_on = record(task, n_examples, used_split) if used_split else None
    batches = as_batches(task, model.tokenizer, n_examples=n_examples, batch_size=batch_size)
    lengths, aggregation = _check_lengths(batches, aggregation)
    ranks = distributed.setup(model.device)  # under torchrun: this rank's share of the pairs, sums reduced
    splice = Splice(model, dictionaries, submodules, sparse=True)
    scores, nodes, weights, contexts = _find(model, splice, distributed.shard(batches), cfg, metric, ranks=ranks,
                                             selection=(node_threshold, top_k), edges=edges, aggregation=aggregation,
                                             memory_budget=memory_budget, checkpoint=checkpoint,
                                             progress=progress and distributed.is_main(),
                                             first=batches[0] if batches else None)
    graph = build_graph(model, splice, scores, nodes, weights, edge_threshold, contexts)
    meta = circuit_metadata(model, splice, cfg, scores, task=task, aggregation=aggregation,
                            node_threshold=node_threshold, edge_threshold=edge_threshold, top_k=top_k,
                            lengths=lengths, metric=metric, found_on=found_on)
    if ranks:
        meta.update(rank_metadata(batches))
    meta["positions"] = _positions(model, task, n_examples) if aggregation == "none" else None
    meta["example"] = {f: task.examples[0][f] for f in FIELDS} if isinstance(task, Task) and len(task) else None
    return Circuit(graph, meta)


def _positions(model: Model, task, n_examples) -> list[dict] | None:
    """The token (and IOI role) each position column shows, where the task's examples are at hand."""
    from .positions import position_labels

    if not isinstance(task, Task) or model.tokenizer is None:
        return None
    return position_labels(model.tokenizer, task.examples[:n_examples])
