"""The default demo (``make demo``): circuits in the organism, offline, in about a minute.

Discovers agreement (across a relative clause) and IOI circuits with RelP, and agreement circuits with IG
(N=10) and AtP at the same threshold for comparison; writes each circuit as JSON, a faithfulness-vs-size
curve for RelP, IG and AtP, one interactive page (``circuits.html``: every circuit on one colour scale and
the curve, one tab each, plotly.js inlined once), and prints a summary table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .circuit import discover
from .dictionaries import load_dictionaries
from .evaluation import evaluate, faithfulness_curve
from .fileio import atomic_write_text
from .models import load_model
from .plots import circuits_page
from .tasks import Task, make_task

NODE_THRESHOLD = 0.1
EDGE_THRESHOLD = 0.02


def _row(task, method, circuit, result, seconds) -> dict:
    return {"task": task, "method": method, "nodes": len(circuit), "edges": circuit.n_edges,
            "faithfulness": f"{result.faithfulness:.3f}", "completeness": f"{result.completeness:.3f}",
            "seconds": f"{seconds:.1f}"}


def run_demo(out: str | Path = "out/demo", *, n_examples: int = 48) -> int:
    from .report import table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start_all = time.perf_counter()
    model = load_model("organism")
    dicts = load_dictionaries("organism", model)
    rows = []
    circuits = {}
    plan = [("sva-rc", "relp"), ("sva-rc", "ig"), ("sva-rc", "atp"), ("ioi", "relp")]
    tasks = {name: Task(name, make_task(name, n_examples, seed=0)) for name in ("sva-rc", "ioi")}
    for task_name, method in plan:
        task = tasks[task_name]
        start = time.perf_counter()
        circuit = discover(model, dicts, task, method=method, node_threshold=NODE_THRESHOLD,
                           edge_threshold=EDGE_THRESHOLD, n_examples=n_examples, progress=True)
        seconds = time.perf_counter() - start
        stem = f"{task_name}_{method}"
        circuit.metadata.setdefault("task", {"name": task_name, "n": n_examples, "seed": 0, "words": "organism"})
        circuit.to_json(out / f"{stem}.json")
        circuits[f"{task_name} · {method}"] = circuit
        rows.append(_row(task_name, method, circuit, evaluate(model, dicts, circuit, task, n_examples=n_examples),
                         seconds))
    curve = faithfulness_curve(model, dicts, tasks["sva-rc"], methods=("relp", "ig", "atp"),
                               n_examples=n_examples, progress=True)
    atomic_write_text(out / "sva-rc_curve.json", json.dumps(curve.to_dict(), indent=1))
    page = circuits_page(circuits, out / "circuits.html", title="Circuits in the organism (featurecircuits demo)",
                         curves={"sva-rc · faithfulness vs nodes": curve})
    print(f"\nCircuits in the organism (node threshold {NODE_THRESHOLD}, edge threshold {EDGE_THRESHOLD}, "
          f"{n_examples} held-out pairs, mean ablation):\n")
    print(table(rows, list(rows[0])))
    print("\nFaithfulness-vs-size curve (area under faithfulness over log10 nodes):")
    print(table([{"method": m, "AUC": f"{curve.auc(m):.3f}"} for m in curve.methods()], ["method", "AUC"]))
    print(f"\nwrote {len(list(out.iterdir()))} files to {out}/ in {time.perf_counter() - start_all:.0f} s; "
          f"open {page} in a browser (works offline)")
    return 0
