"""``featurecircuits discover``: find a circuit and save it as JSON (and HTML)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import inputs, runs
from .guards import check_outputs, input_paths
from .options import (
    AttributionOptions,
    ModelOptions,
    RunOptions,
    TaskOptions,
    add_attribution,
    add_kinds,
    add_model,
    add_resumable,
    add_task,
    from_args,
    nonnegative_int,
    threshold,
)

NAME = "discover"
HELP = "find a circuit and save it as JSON (and HTML)"


def add_arguments(p) -> None:
    add_model(p)
    add_task(p)
    p.add_argument("--node-threshold", type=threshold, default=None,
                   help="keep nodes with |mean score| ≥ this (default: 0.1; with --top-k none, and both given: the "
                        "K largest of the nodes ≥ this)")
    p.add_argument("--edge-threshold", type=threshold, default=0.01,
                   help="keep edges with |weight| ≥ this (the demo uses 0.02)")
    p.add_argument("--top-k", type=nonnegative_int,
                   help="keep the K nodes with the largest |score| instead (with --node-threshold: at most K of "
                        "those above it; the circuit records both)")
    add_kinds(p)
    p.add_argument("--aggregation", choices=["sum", "none"], default="sum",
                   help="sum node scores over positions, or keep one node per position")
    add_attribution(p)
    p.add_argument("--out", required=True, help="circuit JSON file")
    p.add_argument("--html", help="also write the interactive graph here")
    add_resumable(p)


@dataclass(frozen=True)
class Request:
    model: ModelOptions
    task: TaskOptions
    attribution: AttributionOptions
    node_threshold: float | None
    edge_threshold: float
    top_k: int | None
    kinds: tuple[str, ...] | None
    aggregation: str
    out: str
    html: str | None
    run: RunOptions

    @classmethod
    def from_args(cls, args) -> Request:
        return from_args(cls, args, model=from_args(ModelOptions, args), task=from_args(TaskOptions, args),
                         attribution=from_args(AttributionOptions, args), run=from_args(RunOptions, args))


def run(req: Request) -> int:
    from ..circuit import discover
    from ..fileio import atomic_write_many
    from ..plots import circuit_figure

    reads = input_paths(task=req.task.task, model=req.model.model, dictionaries=req.model.dictionaries_spec)
    check_outputs(reads, {"--out": req.out, "--html": req.html},
                  {"--run-dir": (str(runs.run_folder(req.run, req.out, NAME)), [])})
    loaded = inputs.file_task(req.task)
    model, dicts = inputs.load(req.model)
    task, n = inputs.task(req.task, model, loaded)
    checkpoint = runs.open_run(req.run, req.out, runs.run_key(NAME, req, task, dicts))
    inputs.check_dictionaries(model, dicts, task, n)
    start = time.perf_counter()
    circuit = discover(model, dicts, task, config=req.attribution.config(), node_threshold=req.node_threshold,
                       edge_threshold=req.edge_threshold, top_k=req.top_k, aggregation=req.aggregation,
                       n_examples=n, batch_size=req.task.batch_size, progress=True, checkpoint=checkpoint,
                       submodules=inputs.kind_submodules(req.kinds, model, dicts))
    files = {req.out: circuit.to_json() + "\n"}
    if req.html:
        tokens = None  # with positions kept, the columns show the examples' tokens (or "pos k" where they differ)
        if req.aggregation == "none" and model.tokenizer is not None and hasattr(task, "examples"):
            tokens = [model.tokenizer.convert_ids_to_tokens(model.tokenizer.encode(e["clean_prefix"]))
                      for e in task.examples[:n]]
        files[req.html] = inputs.page(circuit_figure(circuit, tokens=tokens))
    atomic_write_many(files)  # both new, or (interrupted) both as they were
    checkpoint.remove()
    print(f"{len(circuit)} nodes, {circuit.n_edges} edges in {time.perf_counter() - start:.1f} s → {req.out}")
    if req.html:
        print(f"graph → {req.html}")
    return 0
