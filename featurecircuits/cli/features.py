"""``featurecircuits features``: feature dossiers of a model's dictionaries over a corpus, for labels and cards."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from . import inputs
from .guards import check_outputs, input_paths
from .options import ModelOptions, add_budget, add_model, from_args, positive_int

NAME = "features"
HELP = "feature dossiers (top contexts, density, histogram, promoted tokens, labels) over a corpus"


def add_arguments(p) -> None:
    add_model(p)
    add_budget(p)
    p.add_argument("--corpus", help="a text file (one document per line), a JSONL file with a 'text' field, or a "
                                    "Hugging Face dataset name (default for the organism: its own training corpus)")
    p.add_argument("--max-tokens", type=positive_int, help="stop after this many tokens (default: the whole corpus; "
                                                           "the organism's corpus: 16,384 tokens)")
    p.add_argument("--k", type=positive_int, default=10, help="top contexts kept per feature")
    p.add_argument("--labels", help="user or Neuronpedia labels to store with the dossiers (they win over automatic "
                                    "ones)")
    p.add_argument("--out", required=True, help="folder for the dossiers (also kept in the cache, where discover, "
                                                "plot, export and the demo find them)")


@dataclass(frozen=True)
class Request:
    model: ModelOptions
    corpus: str | None
    max_tokens: int | None
    k: int
    labels: str | None
    out: str

    @classmethod
    def from_args(cls, args) -> Request:
        return from_args(cls, args, model=from_args(ModelOptions, args))


def run(req: Request) -> int:
    from .. import distributed

    distributed.refuse_ranks("features")
    from ..features import cached_dossiers, open_corpus
    from ..features.circuits import read_label_file
    from ..registry import ORGANISM

    reads = input_paths(task=req.corpus, model=req.model.model, dictionaries=req.model.dictionaries_spec)
    check_outputs(reads, {}, {"--out": (req.out, [])})
    labels = read_label_file(req.labels) if req.labels else None
    if req.corpus is None and req.model.model != ORGANISM:
        raise UsageError("--corpus is required for models other than the organism (a text or JSONL file, or a "
                         "Hugging Face dataset name)")
    model, dicts = inputs.load(req.model)
    if not dicts:
        raise UsageError("--dictionaries none: dossiers describe dictionary features; give dictionaries")
    budgeted = inputs.dossier_options(req.model, model, dicts)  # before the corpus: a refusal reads nothing
    corpus = open_corpus(req.corpus, model.tokenizer, model_name=model.name)
    max_tokens = req.max_tokens or (16384 if req.corpus is None else None)
    dossiers = cached_dossiers(model, dicts, corpus, k=req.k, max_tokens=max_tokens, progress=True, **budgeted)
    if labels:
        dossiers.add_labels(labels)
    dossiers.save(req.out)
    n = sum(int(s.count.numel()) for s in dossiers.states.values())
    print(f"dossiers of {n} features of {len(dossiers.states)} dictionaries over {dossiers.metadata.get('n_tokens')} "
          f"tokens → {req.out}")
    return 0
