"""``featurecircuits discover``: find a circuit and save it as JSON (and HTML)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from . import inputs, runs
from .guards import check_outputs, input_paths
from .options import (
    AttributionOptions,
    FeatureOptions,
    ModelOptions,
    RunOptions,
    TaskOptions,
    add_attribution,
    add_budget,
    add_features,
    add_kinds,
    add_model,
    add_resumable,
    add_split,
    add_task,
    from_args,
    nonnegative_int,
    positive_int,
    threshold,
)

NAME = "discover"
HELP = "find a circuit and save it as JSON (and HTML)"


def add_arguments(p) -> None:
    add_model(p)
    add_task(p)
    add_budget(p)
    add_split(p, NAME, "discovery")
    p.add_argument("--node-threshold", type=threshold, default=None,
                   help="keep nodes with |mean score| ≥ this (default: 0.1; with --top-k none, and both given: the "
                        "K largest of the nodes ≥ this)")
    p.add_argument("--edge-threshold", type=threshold, default=0.01,
                   help="keep edges with |weight| ≥ this (the demo uses 0.02)")
    p.add_argument("--top-k", type=nonnegative_int,
                   help="keep the K nodes with the largest |score| instead (with --node-threshold: at most K of "
                        "those above it; the circuit records both)")
    add_kinds(p)
    p.add_argument("--aggregation", choices=["auto", "none", "sum"], default="auto",
                   help="keep one node per position (none), sum node scores over positions (sum), or auto: "
                        "positions kept where every prompt has one token length")
    add_attribution(p)
    p.add_argument("--verify", type=positive_int, metavar="K",
                   help="check the circuit against activation patching: the exact effect of its top K nodes, K more "
                        "drawn from inside it and K from outside (K patched forwards per pair each), recorded as "
                        "metadata 'verification' and shown on the page")
    add_features(p)
    p.add_argument("--out", required=True, help="circuit JSON file")
    p.add_argument("--html", help="also write the interactive graph here")
    add_resumable(p)


@dataclass(frozen=True)
class Request:
    model: ModelOptions
    task: TaskOptions
    attribution: AttributionOptions
    features: FeatureOptions
    node_threshold: float | None
    edge_threshold: float
    top_k: int | None
    kinds: tuple[str, ...] | None
    aggregation: str
    verify: int | None
    out: str
    html: str | None
    run: RunOptions

    @classmethod
    def from_args(cls, args) -> Request:
        return from_args(cls, args, model=from_args(ModelOptions, args), task=from_args(TaskOptions, args),
                         attribution=from_args(AttributionOptions, args), run=from_args(RunOptions, args),
                         features=from_args(FeatureOptions, args))


def run(req: Request) -> int:
    from .. import distributed
    from ..circuit import discover
    from ..fileio import atomic_write_many

    distributed.init(req.model.device)  # under torchrun: join the ranks (each on its GPU) before the model loads
    distributed.quiet_others()
    reads = input_paths(task=req.task.task, model=req.model.model, dictionaries=req.model.dictionaries_spec)
    check_outputs(reads, {"--out": req.out, "--html": req.html},
                  {"--run-dir": (str(runs.run_folder(req.run, req.out, NAME)), [])})
    loaded = inputs.file_task(req.task)
    labels = req.features.read_labels()
    model, dicts = inputs.load(req.model)
    task, n = inputs.task(req.task, model, loaded)
    batch_size = inputs.batch_size(req.task, req.model, model, dicts, task, n, req.attribution.config(), edges=True)
    checkpoint = runs.open_run(req.run, req.out, runs.run_key(NAME, req, task, dicts))
    inputs.check_dictionaries(model, dicts, task, n)
    start = time.perf_counter()
    circuit = discover(model, dicts, task, config=req.attribution.config(), node_threshold=req.node_threshold,
                       edge_threshold=req.edge_threshold, top_k=req.top_k, aggregation=req.aggregation,
                       n_examples=n, batch_size=batch_size, split=req.task.split, progress=True,
                       checkpoint=checkpoint, memory_budget=inputs.kept_results(req.model),
                       submodules=inputs.kind_submodules(req.kinds, model, dicts))
    if not runs.hand_over(checkpoint):  # under torchrun, rank 0 alone writes
        return 0
    files = _outputs(req, circuit, model, dicts, task, n, labels, batch_size)
    atomic_write_many(files)  # both new, or (interrupted) both as they were
    runs.finish(checkpoint)
    print(f"{len(circuit)} nodes, {circuit.n_edges} edges in {time.perf_counter() - start:.1f} s → {req.out}")
    if req.html in files:
        print(f"graph → {req.html}")
    return 0


def _outputs(req: Request, circuit, model, dicts, task, n: int, labels, batch_size: int) -> dict:
    """The circuit (verified against activation patching with --verify, its features labelled) as JSON, and
    its page with --html."""
    if req.verify:
        from ..fidelity import verify_circuit
        from ..splits import select

        # on the pairs that found it: how well each node's score matches the effect it estimates
        verification = verify_circuit(model, dicts, circuit, select(task, req.task.split), k=req.verify,
                                      n_examples=n, batch_size=batch_size)
        circuit.metadata["verification"] = verification
        pearson = verification["pearson"]
        print(f"verified against activation patching on {verification['n']} nodes: Pearson "
              f"{'n/a' if pearson is None else format(pearson, '.3f')}, {verification['patched_forwards']} patched "
              f"forwards in {verification['seconds']:.1f} s")
    dossiers = req.features.dossiers(model, dicts)
    if dossiers is not None or labels:
        from ..features.circuits import annotate

        annotate(circuit, dossiers, labels)  # labels on the feature nodes, saved with the circuit
    files = {req.out: circuit.to_json() + "\n"}
    if req.html:
        from ..plots import PlotTooLarge

        try:
            files[req.html] = inputs.circuit_page(circuit, dossiers=dossiers, labels=labels)
        except PlotTooLarge as e:  # the circuit is still worth its JSON
            print(f"warning: --html not written: {e}. Draw it with: featurecircuits plot --circuit {req.out} "
                  f"--top-k 500 --out {req.html} (add --edge-threshold W if its edges are still too many)",
                  file=sys.stderr)
    return files
