"""``featurecircuits export``: one example of a circuit in another tool's format (the export format table)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..export import FORMATS
from ..registry import TASK_NAMES
from . import inputs
from .guards import check_outputs, input_paths
from .options import FeatureOptions, TaskOptions, add_features, from_args, nonnegative_int, positive_int, threshold

NAME = "export"
HELP = "one example of a circuit as an attribution graph (circuit-tracer's viewer, Neuronpedia)"


def add_arguments(p) -> None:
    p.add_argument("--circuit", required=True, help="circuit JSON file")
    p.add_argument("--example", type=nonnegative_int, default=0,
                   help="index into the task's examples, in file order")
    p.add_argument("--format", choices=list(FORMATS), default="attribution-graph",
                   help="output format: " + "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()))
    p.add_argument("--out", required=True, help="folder for <slug>.json and graph-metadata.json")
    p.add_argument("--model", help="default: the circuit's model")
    p.add_argument("--dictionaries", help="default: the dictionaries the circuit records it was found with")
    p.add_argument("--task", help="a JSONL file or a task name (default: the circuit's task)")
    p.add_argument("--seed", type=int, default=0, help="seed of a generated --task")
    p.add_argument("--n-examples", type=positive_int, help="examples generated for a --task name (default 100)")
    p.add_argument("--slug", help="the graph's name (default model-task-method-exN)")
    p.add_argument("--groups", metavar="FILE",
                   help='node groups, written as the viewer\'s supernodes (JSON: {"name": ["resid_3/f12", ...]}, '
                        "as for plot --groups)")
    p.add_argument("--edge-threshold", type=threshold,
                   help="keep links with |weight| ≥ this (default: the circuit's)")
    add_features(p)


@dataclass(frozen=True)
class Request:
    circuit: str
    example: int
    format: str
    out: str
    model: str | None
    dictionaries: str | None
    task: str | None
    seed: int
    n_examples: int | None
    slug: str | None
    edge_threshold: float | None
    groups: str | None
    features: FeatureOptions

    @classmethod
    def from_args(cls, args) -> Request:
        return from_args(cls, args, features=from_args(FeatureOptions, args))


def run(req: Request) -> int:
    from ..circuit import Circuit
    from ..export import export_circuit
    from ..groups import check_groups, read_groups

    reads = input_paths(task=req.task, circuit=req.circuit, model=req.model, dictionaries=req.dictionaries)
    check_outputs(reads, {}, {"--out": (req.out, ["graph-metadata.json"])})
    if req.task is not None and not Path(req.task).is_file() and req.task not in TASK_NAMES:
        inputs.file_task(TaskOptions(req.task, req.n_examples, seed=req.seed))  # raises, naming --task
    labels = req.features.read_labels()
    groups = read_groups(req.groups) if req.groups else None
    circuit = Circuit.from_json(req.circuit)
    if groups:
        check_groups(circuit, groups, where=f"--groups {req.groups}")
    task = req.task
    if task is not None and not Path(task).is_file():  # a task name: generated as the circuit's was
        task = {"name": task, "seed": req.seed, **({"n": req.n_examples} if req.n_examples else {})}
    path = export_circuit(circuit, req.out, format=req.format, example=req.example, model=req.model,
                          dictionaries=req.dictionaries or "auto", task=task, slug=req.slug,
                          edge_threshold=req.edge_threshold, features=req.features.features or "auto", labels=labels,
                          **({"groups": groups} if groups else {}))
    hint = FORMATS[req.format].hint
    print(f"example {req.example} as {req.format} → {path}" + (f"; {hint}" if hint else ""))
    return 0
