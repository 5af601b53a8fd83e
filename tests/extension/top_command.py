"""A command added from outside the package: ``featurecircuits top --circuit C --k K`` prints a circuit's K
nodes with the largest |score|. With one line in ``featurecircuits.cli.COMMANDS`` it is a command like the
others (its own parser, a frozen request, exit codes and error handling from ``main``)."""

from dataclasses import dataclass

from featurecircuits.cli.options import from_args, positive_int

NAME = "top"
HELP = "a circuit's nodes with the largest |score|"


def add_arguments(p) -> None:
    p.add_argument("--circuit", required=True, help="circuit JSON file")
    p.add_argument("--k", type=positive_int, default=5, help="how many nodes")


@dataclass(frozen=True)
class Request:
    circuit: str
    k: int

    @classmethod
    def from_args(cls, args):
        return from_args(cls, args)


def run(req: Request) -> int:
    from featurecircuits.circuit import Circuit

    circuit = Circuit.from_json(req.circuit)
    for node in circuit.top(req.k):
        print(f"{node}\t{circuit.score(node):+.4f}")
    return 0
