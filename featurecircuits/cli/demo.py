"""``featurecircuits demo``: the default demo, circuits in the organism, offline."""

from __future__ import annotations

from dataclasses import dataclass

from .guards import check_outputs
from .options import from_args, positive_int

NAME = "demo"
HELP = "the default demo: circuits in the organism, offline"
FILES = ["sva-rc_relp.json", "sva-rc_ig.json", "sva-rc_atp.json", "ioi_relp.json", "sva-rc_curve.json",
         "circuits.html"]


def add_arguments(p) -> None:
    p.add_argument("--out", default="out/demo", help="folder for the circuits, graphs and curves")
    p.add_argument("--n-examples", type=positive_int, default=48,
                   help="pairs per task: this many discovery pairs find each circuit, as many held-out evaluation "
                        "pairs evaluate it")


@dataclass(frozen=True)
class Request:
    out: str
    n_examples: int

    @classmethod
    def from_args(cls, args) -> Request:
        return from_args(cls, args)


def run(req: Request) -> int:
    check_outputs({}, {}, {"--out": (req.out, FILES)})
    from ..demo import run_demo

    return run_demo(req.out, n_examples=req.n_examples)
