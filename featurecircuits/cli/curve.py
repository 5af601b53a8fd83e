"""``featurecircuits curve``: faithfulness vs circuit size for several methods."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..registry import METHODS
from . import inputs, runs
from .guards import check_curve_thresholds, check_outputs, input_paths
from .options import (
    AblationOptions,
    AttributionOptions,
    ModelOptions,
    RunOptions,
    TaskOptions,
    add_ablation,
    add_attribution,
    add_budget,
    add_kinds,
    add_model,
    add_resumable,
    add_split,
    add_task,
    from_args,
    methods,
    thresholds_list,
)

NAME = "curve"
HELP = "faithfulness vs circuit size for several methods"


def add_arguments(p) -> None:
    add_model(p)
    add_task(p)
    add_budget(p)
    add_split(p, NAME, "evaluation")
    add_ablation(p)
    p.add_argument("--methods", type=methods, default="relp,ig,atp",
                   help=f"comma-separated methods ({', '.join(METHODS)})")
    p.add_argument("--thresholds", type=thresholds_list,
                   help="comma-separated; default logspace(-4, 0, 15) × the largest score")
    p.add_argument("--absolute", action="store_true", help="thresholds are absolute scores")
    add_kinds(p)
    add_attribution(p, method=False)
    p.add_argument("--out", required=True, help="curve JSON file")
    p.add_argument("--html", help="also write the plot here")
    add_resumable(p)


@dataclass(frozen=True)
class Request:
    model: ModelOptions
    task: TaskOptions
    ablation: AblationOptions
    attribution: AttributionOptions
    methods: list
    thresholds: list | None
    absolute: bool
    kinds: tuple[str, ...] | None
    out: str
    html: str | None
    run: RunOptions

    @classmethod
    def from_args(cls, args) -> Request:
        return from_args(cls, args, model=from_args(ModelOptions, args), task=from_args(TaskOptions, args),
                         ablation=from_args(AblationOptions, args),
                         attribution=from_args(AttributionOptions, args, method=args.methods[0]),
                         run=from_args(RunOptions, args))


def run(req: Request) -> int:
    import json

    from .. import distributed
    from ..evaluation import check_ranks, faithfulness_curve
    from ..fileio import atomic_write_many
    from ..plots import curve_figure
    from ..report import auc_cell, no_auc, table
    from ..schemas import nulls_for_nonfinite

    distributed.init(req.model.device)  # under torchrun: join the ranks (each on its GPU) before the model loads
    distributed.quiet_others()
    check_ranks(req.ablation.config())  # before the model loads
    check_curve_thresholds(req.thresholds, absolute=req.absolute)
    reads = input_paths(task=req.task.task, model=req.model.model, dictionaries=req.model.dictionaries_spec)
    check_outputs(reads, {"--out": req.out, "--html": req.html},
                  {"--run-dir": (str(runs.run_folder(req.run, req.out, NAME)), [])})
    loaded = inputs.file_task(req.task)
    model, dicts = inputs.load(req.model, start_layer=req.ablation.start_layer)
    task, n = inputs.task(req.task, model, loaded,
                          splits=("all",) if req.task.split == "all" else ("discovery", req.task.split))
    batch_size = inputs.batch_size(req.task, req.model, model, dicts, task, n, req.attribution.config(),
                                   ablation=True)
    checkpoint = runs.open_run(req.run, req.out, runs.run_key(NAME, req, task, dicts))
    inputs.check_dictionaries(model, dicts, task, n)
    curve = faithfulness_curve(model, dicts, task, methods=req.methods, attribution=req.attribution.config(),
                               thresholds=req.thresholds, relative=not req.absolute, config=req.ablation.config(),
                               n_examples=n, batch_size=batch_size, split=req.task.split, progress=True,
                               checkpoint=checkpoint,
                               submodules=inputs.kind_submodules(req.kinds, model, dicts))
    if not runs.hand_over(checkpoint):  # under torchrun, rank 0 alone reports and writes
        return 0
    rows = [{"method": m, "AUC faithfulness": auc_cell(curve, m, "faithfulness"),
             "AUC completeness": auc_cell(curve, m, "completeness")} for m in curve.methods()]
    print(table(rows, list(rows[0])))
    for m in curve.methods():
        if no_auc(curve, m):
            print(f"note: no AUC for {m}: {no_auc(curve, m)}", file=sys.stderr)
    files = {req.out: json.dumps(nulls_for_nonfinite(curve.to_dict()), indent=1, allow_nan=False)}
    if req.html:
        files[req.html] = inputs.page(curve_figure(curve))
    atomic_write_many(files)
    runs.finish(checkpoint)
    return 0
