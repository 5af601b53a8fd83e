"""``featurecircuits compare``: AP vs AtP vs RelP (and IG) at every layer and position (RelP paper, Table 5)."""

from __future__ import annotations

from dataclasses import dataclass

from . import inputs, runs
from .guards import check_outputs, input_paths
from .options import (
    AttributionOptions,
    ModelOptions,
    RunOptions,
    TaskOptions,
    add_attribution,
    add_model,
    add_resumable,
    add_task,
    from_args,
    methods,
)

NAME = "compare"
HELP = "AP vs AtP vs RelP at every layer and position (RelP paper, Table 5)"
POOLINGS = {"cell_means": "cell means", "pairs_x_cells": "pairs × cells"}


def add_arguments(p) -> None:
    add_model(p, dictionaries=False)
    add_task(p, n_flag="--n", default_task="ioi", batch_size=25)
    p.add_argument("--methods", type=methods, default="atp,relp", help="methods compared with AP")
    add_attribution(p, method=False, sweep=True)
    p.add_argument("--normalized", action="store_true",
                   help="metric (LD − LD_patch)/(LD_clean − LD_patch) instead of the logit difference")
    p.add_argument("--out", required=True, help="folder for comparison.json and comparison.html")
    add_resumable(p)


@dataclass(frozen=True)
class Request:
    model: ModelOptions
    task: TaskOptions
    attribution: AttributionOptions
    methods: list
    normalized: bool
    out: str
    run: RunOptions

    @classmethod
    def from_args(cls, args) -> Request:
        return from_args(cls, args, model=from_args(ModelOptions, args), task=from_args(TaskOptions, args),
                         attribution=from_args(AttributionOptions, args, method=args.methods[0]),
                         run=from_args(RunOptions, args))


def _batches(task, n: int, tokenizer, batch_size: int):
    """Batches per IOI template (or agreement variant), so that figures can be given per template too."""
    from ..tasks import Task

    examples = task.examples[:n]
    key = lambda e: e.get("template") or e.get("variant") or "all"  # noqa: E731
    batches, groups = [], []
    for name in dict.fromkeys(map(key, examples)):
        part = Task(task.name, [e for e in examples if key(e) == name]).batches(tokenizer, batch_size)
        batches += part
        groups += [name] * len(part)
    return batches, groups


def _print(comp) -> None:
    from ..compare import PAPER_TABLE5
    from ..report import table

    def pcc_rows(by_pooling, first=None):
        return [{**(first or {}), "component": kind, "pooling": POOLINGS[pooling],
                 **{f"PCC {m}": f"{by_pooling[pooling][m][kind]:.3f}" for m in comp.methods}}
                for kind in ("resid", "attn", "mlp") for pooling in POOLINGS]

    rows = pcc_rows(comp.pcc_by_pooling)
    print(f"{comp.model} · {comp.task} · {comp.n_pairs} pairs: Pearson correlation with activation patching "
          "(cell means: each layer × position cell averaged over pairs; pairs × cells: nothing averaged)\n")
    print(table(rows, list(rows[0])))
    if comp.by_group:
        rows = [r for name, g in comp.by_group.items() for r in pcc_rows(g, {"group": f"{name} ({g['n_pairs']})"})]
        print("\nPer template:\n")
        print(table(rows, list(rows[0])))
    print("\nThe RelP paper's Table 5 (IOI): " + "; ".join(
        f"{name} {kind} AtP {v['atp']:.3f} / RelP {v['relp']:.3f}"
        for name, kinds in PAPER_TABLE5.items() for kind, v in kinds.items()))


def run(req: Request) -> int:
    import json
    from pathlib import Path

    from ..compare import compare
    from ..config import LRPConfig
    from ..fileio import atomic_write_many
    from ..models import load_model
    from ..plots import comparison_figure

    check_outputs(input_paths(task=req.task.task, model=req.model.model),
                  {}, {"--out": (req.out, ["comparison.json", "comparison.html"]),
                       "--run-dir": (str(runs.run_folder(req.run, req.out)), [])})
    loaded = inputs.file_task(req.task)
    model = load_model(req.model.model, **req.model.placement())
    task, n = inputs.task(req.task, model, loaded)
    sweep = req.attribution.rules or [LRPConfig()]
    batches, groups = _batches(task, n, model.tokenizer, req.task.batch_size)
    checkpoint = runs.open_run(req.run, req.out, runs.run_key(NAME, req, task, rules=[r.spec for r in sweep]))
    comp = compare(model, batches, methods=req.methods, normalized=req.normalized, task_name=task.name,
                   attribution=req.attribution.config(rules=sweep[0]), rules=sweep, groups=groups, progress=True,
                   checkpoint=checkpoint)
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_many({out / "comparison.json": json.dumps(comp.to_dict(), indent=1),
                       out / "comparison.html": inputs.page(comparison_figure(comp))})
    checkpoint.remove()
    _print(comp)
    print(f"wrote {out / 'comparison.json'} and {out / 'comparison.html'}")
    return 0
