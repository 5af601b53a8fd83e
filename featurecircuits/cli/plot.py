"""``featurecircuits plot``: an interactive HTML graph of a saved circuit."""

from __future__ import annotations

from dataclasses import dataclass

from .guards import check_outputs, input_paths
from .options import from_args, nonnegative_int, threshold

NAME = "plot"
HELP = "interactive HTML graph of a saved circuit"


def add_arguments(p) -> None:
    p.add_argument("--circuit", required=True, help="circuit JSON file")
    p.add_argument("--out", required=True, help="HTML file")
    p.add_argument("--title", help="page title (default: from the circuit)")
    p.add_argument("--node-threshold", type=threshold, help="show only nodes with |score| ≥ this")
    p.add_argument("--edge-threshold", type=threshold, help="show only edges with |weight| ≥ this")
    p.add_argument("--top-k", type=nonnegative_int, help="show only the K nodes with the largest |score|")


@dataclass(frozen=True)
class Request:
    circuit: str
    out: str
    title: str | None
    node_threshold: float | None
    edge_threshold: float | None
    top_k: int | None

    @classmethod
    def from_args(cls, args) -> Request:
        return from_args(cls, args)


def run(req: Request) -> int:
    from ..circuit import Circuit
    from ..plots import circuit_figure, write_html

    check_outputs(input_paths(circuit=req.circuit), {"--out": req.out})
    circuit = Circuit.from_json(req.circuit)
    if req.node_threshold is not None or req.edge_threshold is not None or req.top_k is not None:
        circuit = circuit.prune(node_threshold=req.node_threshold, edge_threshold=req.edge_threshold,
                                top_k=req.top_k)
    write_html(circuit_figure(circuit, title=req.title), req.out)
    print(f"{len(circuit)} nodes, {circuit.n_edges} edges → {req.out}")
    return 0
