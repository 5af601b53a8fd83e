"""``featurecircuits plot``: an interactive HTML graph of a saved circuit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..registry import PLOT_MAX_EDGES as MAX_EDGES
from ..registry import PLOT_MAX_NODES as MAX_NODES
from .guards import check_outputs, input_paths
from .options import FeatureOptions, add_features, from_args, nonnegative_int, positive_int, threshold

NAME = "plot"
HELP = "interactive HTML graph of a saved circuit"


def add_arguments(p) -> None:
    p.add_argument("--circuit", required=True, help="circuit JSON file")
    p.add_argument("--out", required=True, help="HTML file")
    p.add_argument("--title", help="page title (default: from the circuit)")
    p.add_argument("--node-threshold", type=threshold, help="show only nodes with |score| ≥ this")
    p.add_argument("--edge-threshold", type=threshold, help="show only edges with |weight| ≥ this")
    p.add_argument("--top-k", type=nonnegative_int, help="show only the K nodes with the largest |score|")
    p.add_argument("--max-nodes", type=positive_int, default=MAX_NODES,
                   help=f"draw circuits of at most this many nodes (after the options above; default {MAX_NODES:,}): "
                        "a larger one is refused before drawing, as its page takes minutes to build and open")
    p.add_argument("--max-edges", type=positive_int, default=MAX_EDGES,
                   help=f"likewise for edges (default {MAX_EDGES:,})")
    p.add_argument("--groups", metavar="FILE",
                   help='draw named node groups collapsed into one node each (JSON: {"name": ["resid_3/f12", ...]}; '
                        "a member without @position stands for every position)")
    add_features(p)


@dataclass(frozen=True)
class Request:
    circuit: str
    out: str
    title: str | None
    node_threshold: float | None
    edge_threshold: float | None
    top_k: int | None
    max_nodes: int
    max_edges: int
    groups: str | None
    features: FeatureOptions

    @classmethod
    def from_args(cls, args) -> Request:
        return from_args(cls, args, features=from_args(FeatureOptions, args))


def _dossiers(circuit, options: FeatureOptions):
    """The circuit's dossiers, loading its model and dictionaries only where there are some to show."""
    from ..export.provenance import circuit_dictionaries, circuit_model
    from ..features.circuits import cached_folder

    if options.features == "none":
        return None
    hashes = {k: v["hash"] for k, v in (circuit.metadata.get("dictionary_sources") or {}).items()}
    if options.features is None and cached_folder(str(circuit.metadata.get("model")), hashes) is None:
        return None
    model = circuit_model(circuit)
    dictionaries, _ = circuit_dictionaries(circuit, model)
    return options.dossiers(model, dictionaries)


def run(req: Request) -> int:
    from ..circuit import Circuit
    from ..fileio import atomic_write_text
    from ..groups import check_groups, read_groups
    from ..plots import check_size
    from . import inputs

    reads = input_paths(circuit=req.circuit)
    if req.groups and Path(req.groups).exists():
        reads["groups file (--groups)"] = Path(req.groups)
    check_outputs(reads, {"--out": req.out})
    labels = req.features.read_labels()
    groups = read_groups(req.groups) if req.groups else None
    circuit = Circuit.from_json(req.circuit)
    if req.node_threshold is not None or req.edge_threshold is not None or req.top_k is not None:
        circuit = circuit.prune(node_threshold=req.node_threshold, edge_threshold=req.edge_threshold,
                                top_k=req.top_k)
    limits = {"max_nodes": req.max_nodes, "max_edges": req.max_edges}
    check_size(circuit, req.circuit, **limits)  # before its model and dossiers load
    if groups:
        check_groups(circuit, groups, where=f"--groups {req.groups}")
    page = inputs.circuit_page(circuit, title=req.title, dossiers=_dossiers(circuit, req.features), labels=labels,
                               groups=groups, **limits)
    atomic_write_text(req.out, page)
    print(f"{len(circuit)} nodes, {circuit.n_edges} edges → {req.out}")
    return 0
