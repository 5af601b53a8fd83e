"""``featurecircuits compare``: AP vs AtP vs RelP (and IG) at every layer and position (RelP paper, Table 5), or
at every feature and error node (``--level feature``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..registry import NO_DICTIONARIES
from . import inputs, runs
from .guards import check_outputs, input_paths
from .options import (
    AttributionOptions,
    ModelOptions,
    RunOptions,
    TaskOptions,
    add_attribution,
    add_budget,
    add_model,
    add_resumable,
    add_task,
    from_args,
    methods,
    positive_int,
)

NAME = "compare"
HELP = "AP vs AtP vs RelP at every layer and position (RelP paper, Table 5), or at every feature"
MAX_BATCH = 256  # sequences per forward for AP and IG (the API's default)
POOLINGS = {"cell_means": "cell means", "pairs_x_cells": "pairs × cells"}


def add_arguments(p) -> None:
    add_model(p)
    p.add_argument("--level", choices=["component", "feature"], default="component",
                   help="component: resid/attn/MLP outputs per layer and position; feature: every feature active in "
                        "either run of a pair and every error node, per submodule kind and for error nodes, with "
                        "--dictionaries (see docs/fidelity.md)")
    p.add_argument("--sample", type=positive_int, default=None,
                   help="--level feature: AP of at most K features per submodule and position, drawn uniformly "
                        "(seeded by --sample-seed, recorded) from those active in some pair (default: all)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of --sample's draw")
    add_task(p, n_flag="--n", default_task="ioi", batch_size=25)
    add_budget(p)
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
    level: str = "component"
    sample: int | None = None
    sample_seed: int = 0

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


def _print(comp, kinds=("resid", "attn", "mlp")) -> None:
    from ..compare import PAPER_TABLE5
    from ..report import table

    def pcc_rows(by_pooling, first=None):
        return [{**(first or {}), "component": kind, "pooling": POOLINGS[pooling],
                 **{f"PCC {m}": _number(by_pooling[pooling][m][kind]) for m in comp.methods}}
                for kind in kinds for pooling in POOLINGS]

    rows = pcc_rows(comp.pcc_by_pooling)
    feature = getattr(comp, "level", "") == "feature"
    cells = "node (submodule, position, feature)" if feature else "layer × position cell"
    print(f"{comp.model} · {comp.task} · {comp.n_pairs} pairs: Pearson correlation with activation patching "
          f"(cell means: each {cells} averaged over pairs; pairs × cells: nothing averaged)\n")
    print(table(rows, list(rows[0])))
    if comp.by_group:
        rows = [r for name, g in comp.by_group.items() for r in pcc_rows(g, {"group": f"{name} ({g['n_pairs']})"})]
        print("\nPer template:\n")
        print(table(rows, list(rows[0])))
    if feature:
        counts = ", ".join(f"{k} {c['nodes']} ({c['pair_nodes']})" for k, c in comp.counts.items())
        drawn = f"at most {comp.sample} per submodule and position (seed {comp.seed})" if comp.sample else "all"
        print(f"\nNodes (pair × node entries): {counts}; features patched: {drawn}; {comp.patched_forwards} patched "
              f"sequences; {comp.seconds:.1f} s")
        return
    print("\nThe RelP paper's Table 5 (IOI): " + "; ".join(
        f"{name} {kind} AtP {v['atp']:.3f} / RelP {v['relp']:.3f}"
        for name, kinds in PAPER_TABLE5.items() for kind, v in kinds.items()))


def _number(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _check_level(req: Request) -> None:
    if req.level == "component" and (req.model.dictionaries not in (None, NO_DICTIONARIES) or req.sample):
        raise UsageError("--dictionaries and --sample apply to --level feature; add --level feature, or leave them out "
                         "for the component-level comparison")
    if req.level == "feature" and req.model.dictionaries_spec == NO_DICTIONARIES:
        raise UsageError(f"--level feature needs dictionaries, and none are known for --model {req.model.model}: give "
                         "--dictionaries (a spec, or 'neurons' for one node per dimension)")


def _compare(req: Request, model, dicts, batches, groups, checkpoint, max_batch: int):
    from ..compare import compare
    from ..config import LRPConfig
    from ..fidelity import compare_features

    sweep = req.attribution.rules or [LRPConfig()]
    options = dict(methods=req.methods, normalized=req.normalized, attribution=req.attribution.config(rules=sweep[0]),
                   rules=sweep, groups=groups, progress=True, checkpoint=checkpoint, max_batch=max_batch)
    if req.level == "feature":
        return compare_features(model, dicts, batches, sample=req.sample, seed=req.sample_seed, **options)
    return compare(model, batches, task_name=req.task.task, **options)


def run(req: Request) -> int:
    from .. import distributed

    distributed.refuse_ranks("compare")
    import json
    from pathlib import Path

    from ..config import LRPConfig
    from ..fileio import atomic_write_many
    from ..plots.compare import comparison_figure, feature_comparison_figure

    _check_level(req)
    feature = req.level == "feature"
    check_outputs(input_paths(task=req.task.task, model=req.model.model,
                              dictionaries=req.model.dictionaries_spec if feature else None),
                  {}, {"--out": (req.out, ["comparison.json", "comparison.html"]),
                       "--run-dir": (str(runs.run_folder(req.run, req.out)), [])})
    loaded = inputs.file_task(req.task)
    model, dicts = inputs.load(req.model, dictionaries=None if feature else NO_DICTIONARIES)
    task, n = inputs.task(req.task, model, loaded)
    sweep = req.attribution.rules or [LRPConfig()]
    batch_size = inputs.batch_size(req.task, req.model, model, dicts, task, n, req.attribution.config())
    batches, groups = _batches(task, n, model.tokenizer, batch_size)
    checkpoint = runs.open_run(req.run, req.out, runs.run_key(NAME, req, task, dicts, rules=[r.spec for r in sweep]))
    # under a budget AP's patched forwards (no gradient) and IG's interpolations hold the sequences of a batch
    max_batch = 2 * batch_size if req.model.memory_budget is not None else MAX_BATCH
    comp = _compare(req, model, dicts, batches, groups, checkpoint, max_batch)
    comp.task = task.name
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = feature_comparison_figure(comp) if feature else comparison_figure(comp)
    atomic_write_many({out / "comparison.json": json.dumps(comp.to_dict(), indent=1),
                       out / "comparison.html": inputs.page(figure)})
    checkpoint.remove()
    _print(comp, comp.kinds if feature else ("resid", "attn", "mlp"))
    print(f"wrote {out / 'comparison.json'} and {out / 'comparison.html'}")
    return 0
