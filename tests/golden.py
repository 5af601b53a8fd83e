"""Golden outputs on the organism: discover / evaluate / curve / compare, recorded before code moves.

``python tests/golden.py`` re-records ``tests/data/golden.json``; ``tests/test_golden.py`` checks that the
code reproduces it. Re-record only in a commit of its own whose message names the change that moved the
figures and by how much.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import featurecircuits as fc
from featurecircuits.compare import compare
from featurecircuits.tasks import Task, make_task

PATH = Path(__file__).parent / "data" / "golden.json"

# (name, task, method, discover options): small and fast, but covering every method with edges,
# both aggregations, threshold and top-k selection. Recorded on every pair of each task (split "all") with the
# aggregation named, as before tasks had splits and discover kept positions by default where prompts align.
CIRCUITS = [
    ("sva-rc_relp", "sva-rc", "relp", {"node_threshold": 0.1, "edge_threshold": 0.02, "aggregation": "sum"}),
    ("sva-rc_atp", "sva-rc", "atp", {"node_threshold": 0.1, "edge_threshold": 0.02, "aggregation": "sum"}),
    ("sva-simple_ig", "sva-simple", "ig", {"top_k": 25, "edge_threshold": 0.02, "aggregation": "sum"}),
    ("ioi_relp_positions", "ioi", "relp", {"top_k": 30, "edge_threshold": 0.05, "aggregation": "none"}),
]
N = 16


def _task(name: str) -> Task:
    examples = make_task(name, N, seed=0)
    if name == "ioi":  # one template, so positions can be kept
        examples = [e for e in make_task(name, 3 * N, seed=0) if e["template"] == "then"][:N]
    return Task(name, examples)


def _circuit_record(circuit) -> dict:
    nodes = {n: circuit.score(n) for n in circuit.nodes}
    edges = sorted([u, v, w] for u, v, w in circuit.graph.edges(data="weight"))
    return {"nodes": nodes, "edges": edges}


def record(model, dicts) -> dict:
    out: dict = {"circuits": {}, "evaluate": {}}
    for name, task_name, method, options in CIRCUITS:
        task = _task(task_name)
        circuit = fc.discover(model, dicts, task, method=method, n_examples=N, split="all", progress=False,
                              **options)
        out["circuits"][name] = _circuit_record(circuit)
        result = fc.evaluate(model, dicts, circuit, task, n_examples=N, split="all")
        out["evaluate"][name] = {k: getattr(result, k) for k in (
            "faithfulness", "completeness", "m_circuit", "m_complement", "m_empty", "m_full", "n_nodes")}
    curve = fc.faithfulness_curve(model, dicts, _task("sva-rc"), methods=("relp", "atp"),
                                  thresholds=[0.01, 0.1, 0.5], n_examples=N, split="all", aggregation="sum",
                                  progress=False)
    out["curve"] = [[p.method, p.threshold, p.n_nodes, p.faithfulness, p.completeness, p.random_faithfulness]
                    for p in curve.points]
    task = _task("ioi")
    comp = compare(model, task.batches(model.tokenizer, 8, n=8), methods=("atp", "relp"))
    out["compare"] = {"pcc": comp.pcc,
                      "grids": {m: {k: g.tolist() for k, g in by_kind.items()}
                                for m, by_kind in next(iter(comp.grids.values())).items()}}
    return out


def load_organism():
    model = fc.load_model("organism")
    return model, fc.load_dictionaries("organism", model)


if __name__ == "__main__":
    data = record(*load_organism())
    PATH.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {PATH}", file=sys.stderr)
