"""The default demo (``make demo``): circuits in the organism, offline, in about a minute.

Discovers agreement (across a relative clause) and IOI circuits with RelP, and agreement circuits with IG
(N=10) and AtP at the same threshold for comparison, each on the task's discovery pairs, and evaluates each
on the task's evaluation pairs (disjoint: :mod:`featurecircuits.splits`); writes each circuit as JSON, a
faithfulness-vs-size curve for RelP, IG and AtP (nodes scored on discovery pairs, circuits evaluated on
evaluation pairs), one interactive page (``circuits.html``: a tab per circuit with positions where the
prompts align, its faithfulness and an example pair, each feature's label and card from its dossier on the
organism's own corpus (built once and cached), and the curve with each circuit marked on it), and prints a
summary table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .circuit import discover
from .dictionaries import load_dictionaries
from .evaluation import evaluate, faithfulness_curve
from .features import cached_dossiers, open_corpus
from .features.circuits import annotate
from .fileio import atomic_write_text
from .models import load_model
from .plots import circuits_page
from .splits import generate
from .tasks import Task

NODE_THRESHOLD = 0.1
EDGE_THRESHOLD = 0.02
PLAN = [("sva-rc", "relp"), ("sva-rc", "ig"), ("sva-rc", "atp"), ("ioi", "relp")]
DOSSIER_TOKENS = 16384  # of the organism's corpus: every feature's contexts, density and histogram


def _row(task, method, circuit, result, seconds) -> dict:
    return {"task": task, "method": method, "positions": "kept" if circuit.metadata["aggregation"] == "none" else
            "summed", "nodes": len(circuit), "edges": circuit.n_edges, "faithfulness": f"{result.faithfulness:.3f}",
            "completeness": f"{result.completeness:.3f}", "seconds": f"{seconds:.1f}"}


def _dossiers(model, dicts):
    """What every feature does on the organism's own corpus (built once, then read from the cache)."""
    corpus = open_corpus(None, model.tokenizer, model_name=model.name)
    return cached_dossiers(model, dicts, corpus, max_tokens=DOSSIER_TOKENS)


def _tasks(n: int) -> dict[str, Task]:
    """Each task's n discovery pairs followed by its n evaluation pairs (disjoint)."""
    out = {}
    for name in dict.fromkeys(t for t, _ in PLAN):
        parts = [generate(name, n, split=split, seed=0) for split in ("discovery", "evaluation")]
        out[name] = Task(name, parts[0].examples + parts[1].examples,
                         source={"generator": name, "n": n, "seed": 0, "words": "organism", "split": "all"})
    return out


def run_demo(out: str | Path = "out/demo", *, n_examples: int = 48) -> int:
    from .report import table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start_all = time.perf_counter()
    model = load_model("organism")
    dicts = load_dictionaries("organism", model)
    dossiers = _dossiers(model, dicts)
    rows, circuits, results = [], {}, {}
    tasks = _tasks(n_examples)
    for task_name, method in PLAN:
        task = tasks[task_name]
        start = time.perf_counter()
        circuit = discover(model, dicts, task, method=method, node_threshold=NODE_THRESHOLD,
                           edge_threshold=EDGE_THRESHOLD, n_examples=n_examples, split="discovery")
        seconds = time.perf_counter() - start
        annotate(circuit, dossiers)  # each feature's label, from its dossier
        circuit.to_json(out / f"{task_name}_{method}.json")
        name = f"{task_name} · {method}"
        circuits[name] = circuit
        results[name] = evaluate(model, dicts, circuit, task, n_examples=n_examples, split="evaluation")
        rows.append(_row(task_name, method, circuit, results[name], seconds))
    curve = faithfulness_curve(model, dicts, tasks["sva-rc"], methods=("relp", "ig", "atp"), n_examples=n_examples)
    atomic_write_text(out / "sva-rc_curve.json", json.dumps(curve.to_dict(), indent=1))
    page = circuits_page(circuits, out / "circuits.html", title="Circuits in the organism (featurecircuits demo)",
                         evaluations=results, curves={"sva-rc · faithfulness vs nodes": curve}, dossiers=dossiers)
    print(f"\nCircuits in the organism (node threshold {NODE_THRESHOLD}, edge threshold {EDGE_THRESHOLD}, mean "
          f"ablation): each found on {n_examples} discovery pairs, evaluated on {n_examples} held-out evaluation "
          "pairs (disjoint):\n")
    print(table(rows, list(rows[0])))
    print(f"\nFaithfulness-vs-size curve (nodes scored on the discovery pairs, faithfulness on the {n_examples} "
          "held-out pairs; area under faithfulness over log10 nodes):")
    print(table([{"method": m, "AUC": f"{curve.auc(m):.3f}"} for m in curve.methods()], ["method", "AUC"]))
    print(f"\nwrote {len(list(out.iterdir()))} files to {out}/ in {time.perf_counter() - start_all:.0f} s; "
          f"open {page} in a browser (works offline)")
    return 0
