"""``featurecircuits tasks make``: generate clean/patch pairs as JSONL."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import TASK_NAMES
from .guards import check_outputs
from .options import from_args, positive_int

NAME = "tasks"
HELP = "task data"


def add_arguments(p) -> None:
    from ..words import WORD_LISTS

    make = p.add_subparsers(dest="tasks_command", required=True).add_parser(
        "make", help="generate clean/patch pairs as JSONL")
    make.add_argument("name", choices=TASK_NAMES, help="the task")
    make.add_argument("--n", type=positive_int, default=100,
                      help="number of distinct pairs (at most the number the word lists allow)")
    make.add_argument("--seed", type=int, default=0, help="random seed")
    make.add_argument("--words", choices=list(WORD_LISTS), default="organism",
                      help="word lists: the organism's (held-out combinations) or single tokens for Pythia")
    make.add_argument("--out", required=True, help="JSONL file (its folder must exist)")
    make.set_defaults(request=MakeRequest, run=run_make)


@dataclass(frozen=True)
class MakeRequest:
    name: str
    n: int
    seed: int
    words: str
    out: str

    @classmethod
    def from_args(cls, args) -> MakeRequest:
        return from_args(cls, args)


def run_make(req: MakeRequest) -> int:
    from ..tasks import make_task, save_task

    check_outputs({}, {"--out": req.out})
    examples = make_task(req.name, req.n, seed=req.seed, words=req.words)
    path = save_task(examples, req.out)
    print(f"wrote {len(examples)} {req.name} pairs to {path}")
    return 0
