"""``featurecircuits evaluate``: faithfulness and completeness of a saved circuit."""

from __future__ import annotations

from dataclasses import dataclass

from . import inputs
from .guards import check_outputs, input_paths
from .options import (
    AblationOptions,
    ModelOptions,
    TaskOptions,
    add_ablation,
    add_budget,
    add_model,
    add_split,
    add_task,
    from_args,
)

NAME = "evaluate"
HELP = "faithfulness and completeness of a saved circuit"


def add_arguments(p) -> None:
    add_model(p)
    add_task(p)
    add_budget(p)
    add_split(p, NAME, "evaluation")
    add_ablation(p)
    p.add_argument("--circuit", required=True, help="circuit JSON file (from discover)")
    p.add_argument("--out", help="result JSON file")


@dataclass(frozen=True)
class Request:
    model: ModelOptions
    task: TaskOptions
    ablation: AblationOptions
    circuit: str
    out: str | None

    @classmethod
    def from_args(cls, args) -> Request:
        return from_args(cls, args, model=from_args(ModelOptions, args), task=from_args(TaskOptions, args),
                         ablation=from_args(AblationOptions, args))


def run(req: Request) -> int:
    import json
    from dataclasses import asdict

    from .. import distributed
    from ..circuit import Circuit
    from ..errors import UsageError
    from ..evaluation import check_ranks, evaluate
    from ..export.provenance import check_spec_present, dictionaries_spec
    from ..fileio import atomic_write_text
    from ..report import table

    distributed.init(req.model.device)  # under torchrun: join the ranks (each on its GPU) before the model loads
    distributed.quiet_others()
    check_ranks(req.ablation.config())  # before the model loads
    reads = input_paths(task=req.task.task, circuit=req.circuit, model=req.model.model,
                        dictionaries=req.model.dictionaries_spec)
    check_outputs(reads, {"--out": req.out})
    loaded = inputs.file_task(req.task)
    circuit = Circuit.from_json(req.circuit)  # the schema checked before the model loads
    spec = req.model.dictionaries  # default: the dictionaries the circuit was found with
    if spec is None and (spec := dictionaries_spec(circuit.metadata)) is not None:
        check_spec_present(spec, req.circuit)
    model, dicts = inputs.load(req.model, start_layer=req.ablation.start_layer, dictionaries=spec)
    try:
        circuit.check_model(model)
    except ValueError as exc:
        raise UsageError(f"{req.circuit}: {exc}") from None
    inputs.check_features(req.circuit, circuit, dicts)
    task, n = inputs.task(req.task, model, loaded)
    inputs.check_dictionaries(model, dicts, task, n)
    batch_size = inputs.batch_size(req.task, req.model, model, dicts, task, n, ablation=True)
    result = evaluate(model, dicts, circuit, task, config=req.ablation.config(), n_examples=n, batch_size=batch_size,
                      split=req.task.split)
    if not distributed.is_main():  # under torchrun, rank 0 alone reports and writes
        return 0
    row = {"nodes": result.n_nodes, "edges": result.n_edges, "faithfulness": f"{result.faithfulness:.3f}",
           "completeness": f"{result.completeness:.3f}", "m(C)": f"{result.m_circuit:.3f}",
           "m(empty)": f"{result.m_empty:.3f}", "m(M)": f"{result.m_full:.3f}",
           "pairs": f"{result.n_examples} {result.split or 'given'}" + (" (in-sample)" if result.in_sample else "")}
    print(table([row], list(row)))
    if req.out:
        atomic_write_text(req.out, json.dumps(asdict(result), indent=1))
    return 0
