"""One example of a circuit's task, scored on its own with positions kept: what a per-prompt attribution
graph shows."""

from __future__ import annotations

from pathlib import Path

from ..circuit import Circuit
from ..config import AttributionConfig
from ..nodes import METRIC_NODE, NodeRef
from .provenance import task_spec


def load_example(task: dict | str, model, index: int) -> dict:
    """The ``index``-th example (file order) of a task given as a JSONL file or a generator spec, among the
    pairs of its recorded ``split`` (the circuit's own pairs) where the spec names one."""
    from ..splits import generate, select
    from ..tasks import load_task

    spec = task_spec({"task": task}) if isinstance(task, str) else dict(task)
    path = spec.get("file") or spec.get("path")
    split = spec.get("split") or "all"
    if path and Path(path).is_file():
        examples = select(load_task(path, model.tokenizer), split).examples
    else:
        name = spec.get("name") or spec.get("generator")
        if not name:
            raise ValueError("the circuit's metadata names no task; pass --task (a JSONL file or a task name)")
        words = spec.get("words") or ("organism" if model.name == "organism" else "pythia")
        examples = generate(name, int(spec.get("n") or max(100, index + 1)), split=split,
                            seed=int(spec.get("seed") or 0), words=words, tokenizer=model.tokenizer).examples
    if not 0 <= index < len(examples):
        raise ValueError(f"example {index} does not exist: the task has {len(examples)} examples (0 to "
                         f"{len(examples) - 1})")
    return examples[index]


def _key(node: str, positional: bool) -> NodeRef:
    ref = NodeRef.parse(node)
    return ref if positional else ref.summed()


def example_circuit(model, dictionaries, circuit: Circuit, batch, *, edge_threshold: float | None = None) -> Circuit:
    """The circuit's nodes on one example (a one-example Batch), positions kept, with scores and the
    edges among them with |weight| ≥ ``edge_threshold`` (default the circuit's; 0 keeps every edge),
    scored with the circuit's method and settings.

    ``discover`` cannot be told which nodes to keep, so the example is scored twice with it: once
    without edges, to rank every node that scores non-zero, then with edges for the top k, k just large
    enough to hold every node that matches the circuit (its submodule and feature, and its position
    when the circuit keeps positions). Edge weights do not depend on which other nodes are selected, so
    this gives exactly the edges among the circuit's nodes. Nodes that score zero on the example are
    left out."""
    from ..circuit import discover

    meta = circuit.metadata
    positional = meta.get("aggregation") == "none" and batch.n_tokens in (meta.get("token_lengths") or [])
    wanted = {_key(n, positional) for n in circuit.nodes}
    if edge_threshold is None:
        edge_threshold = float(meta.get("edge_threshold") or 0.0)
    config = AttributionConfig.from_dict(meta["config"]) if isinstance(meta.get("config"), dict) else \
        AttributionConfig(method=meta.get("method") or "relp")
    opts = dict(config=config, aggregation="none", node_threshold=0.0, edge_threshold=edge_threshold,
                n_examples=None, submodules=meta.get("submodules"))
    everything = discover(model, dictionaries, [batch], top_k=10**12, edges=False, **opts)
    ranked = everything.top(len(everything))  # the order discover's top_k uses
    last = max((i for i, n in enumerate(ranked) if _key(n, positional) in wanted), default=-1)
    if last < 0:
        raise ValueError("none of the circuit's nodes scores non-zero on this example")
    scored = discover(model, dictionaries, [batch], top_k=last + 1, edges=True, **opts)
    keep = [n for n in scored.nodes if _key(n, positional) in wanted]
    return Circuit(scored.graph.subgraph([*keep, METRIC_NODE]).copy(), dict(scored.metadata))
