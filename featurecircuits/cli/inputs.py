"""The model, dictionaries and task a command runs on, from its request: task files are read and checked
before the model loads; the rest loads with it."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError
from ..registry import NO_DICTIONARIES, TASK_NAMES
from .options import ModelOptions, TaskOptions


def file_task(options: TaskOptions):
    """A --task that is a file, loaded and checked against the task schema (no model needed); None for a name.
    A task name is the generated task even where the current folder holds a file or folder of that name (a
    note says it is not read; ``./ioi`` reads it)."""
    from ..tasks import load_task

    path = Path(options.task)
    if options.task in TASK_NAMES:
        if path.exists():
            print(f"note: --task {options.task} is the generated task; the {'folder' if path.is_dir() else 'file'} "
                  f"{options.task} here is not read (give ./{options.task} to read it)", file=sys.stderr)
        return None
    if path.is_dir():
        raise UsageError(f"--task {path} is a directory; give a JSONL file or a task name ({', '.join(TASK_NAMES)})")
    if path.is_file():
        task = load_task(path)
        if options.n_examples is not None and options.n_examples > len(task):
            print(f"note: {path} holds {len(task)} pairs; --n-examples {options.n_examples} uses all {len(task)}",
                  file=sys.stderr)
        return task
    if options.task in TASK_NAMES:
        return None
    raise UsageError(f"--task {options.task!r} is neither a file nor a task name; task names: "
                     f"{', '.join(TASK_NAMES)}")


def load(options: ModelOptions, *, start_layer: int | None = None, dictionaries: str | None = None):
    """(model, dictionaries or None): ``dictionaries`` (a spec) overrides the options' set."""
    from ..dictionaries import load_dictionaries
    from ..models import load_model

    model = load_model(options.model, **options.placement())
    if start_layer is not None and start_layer >= model.n_layers:
        raise UsageError(f"--start-layer {start_layer} is beyond the model's {model.n_layers} layers "
                         f"(0 … {model.n_layers - 1})")
    spec = dictionaries or options.dictionaries_spec
    return model, (None if spec == NO_DICTIONARIES else load_dictionaries(spec, model))


def task(options: TaskOptions, model, loaded=None, *, splits: tuple[str, ...] | None = None):
    """(task, number of examples to use): a file already loaded by :func:`file_task` (now checked against
    the tokenizer), or a task name generated with the word lists that suit the model: ``n`` pairs of each of
    ``splits`` (default: the options' split)."""
    from ..tasks import Task, validate

    if loaded is None:
        loaded = file_task(options)  # None for a task name
    if loaded is not None:
        validate(loaded, model.tokenizer, source=str(options.task), context=model.context_length)
        return loaded, options.n
    parts = [_generated(options, model, s) for s in dict.fromkeys(splits or (options.split,))]
    n = min(len(p) for p in parts)
    if len(parts) == 1:
        return parts[0], n
    examples = [e for p in parts for e in p.examples[:n]]
    return Task(options.task, examples, source={**parts[0].source, "split": "all"}), n


def _generated(options: TaskOptions, model, split: str):
    """``n`` generated pairs of one split (all there are, with a note, when the split has fewer and --n-examples
    was not given)."""
    from ..splits import generate
    from ..tasks import validate
    from ..words import words_for

    words = words_for(model.tokenizer)
    generated = generate(options.task, options.n, split=split, seed=options.seed, words=words,
                         tokenizer=model.tokenizer)
    if len(generated) < options.n:
        where = f"task {options.task} has only {len(generated)} distinct pairs in its {split} split with the {words} " \
                "word lists"
        if options.n_examples is not None:
            raise UsageError(f"--n-examples {options.n}: {where}; ask for at most {len(generated)}")
        print(f"note: {where}; using all {len(generated)}", file=sys.stderr)
    validate(generated, model.tokenizer, source=f"generated {options.task}", context=model.context_length)
    return generated


def batch_size(options: TaskOptions, model_options: ModelOptions, model, dicts, task, n: int, config=None, *,
               edges: bool = False, ablation: bool = False) -> int:
    """Pairs per forward/backward: --batch-size, or with --memory-budget the largest batch whose planned peak
    fits (capped by --batch-size where that was given), reported on stderr (:mod:`featurecircuits.budget`).
    ``dicts``: the sparse feature path is planned (features active per token probed on a few pairs); without,
    the component-level one. ``config``: the attribution config (its method). ``edges``: plan discover's edge
    scoring too. ``ablation``: the run also ablates (evaluate, curve), holding every submodule's dense features
    for a batch at once: the dense path is planned too (an overestimate of a forward without gradients) and
    the smaller batch taken."""
    budget = model_options.memory_budget
    if budget is None:
        return options.batch_size
    from ..budget import PROBE_PAIRS, choose_batch, probe_l0, task_tokens

    n = min(n, len(task))
    l0 = probe_l0(model, dicts, task.batches(model.tokenizer, PROBE_PAIRS, n=min(n, PROBE_PAIRS))[0]) if dicts else None
    plan = dict(tokens=task_tokens(task, model.tokenizer, n), n_pairs=n, method=getattr(config, "method", "relp"),
                cap=options.batch_size if options.batch_size_given else None, option="--memory-budget")
    choice = choose_batch(model, dicts, budget, l0=l0, edges=edges, **plan)
    if ablation and dicts:
        choice = min(choice, choose_batch(model, dicts, budget, l0=None, **plan), key=lambda c: c.batch)
    from .. import distributed

    if distributed.is_main():  # every rank plans alike; one says so
        print(choice.message("--memory-budget"), file=sys.stderr)
    return choice.batch


def dossier_options(model_options: ModelOptions, model, dicts) -> dict:
    """Dossier options for --memory-budget: the most tokens per forward that fit (at most the default, whose
    cache key a generous budget keeps), reported on stderr; none without a budget."""
    if model_options.memory_budget is None:
        return {}
    from ..budget import choose_dossier_tokens

    choice = choose_dossier_tokens(model, dicts, model_options.memory_budget, option="--memory-budget")
    print(choice.message("--memory-budget"), file=sys.stderr)
    return {"batch_tokens": choice.batch}


def kept_results(model_options: ModelOptions) -> int:
    """Bytes of per-batch attributions discover may keep for its edges: none under --memory-budget (they are
    recomputed, not counted in the plan), else the default."""
    from ..scoring import RESULT_MEMORY_BUDGET

    return 0 if model_options.memory_budget is not None else RESULT_MEMORY_BUDGET


def check_dictionaries(model, dicts, task, n: int | None) -> None:
    """Warn, naming them, about dictionaries that explain less than half of their submodule's variance on the
    task's first prompts (one small forward; :mod:`featurecircuits.dictionaries.quality`)."""
    if not dicts or model.tokenizer is None:
        return
    import torch

    from ..dictionaries import check_explained_variance

    rows = 8  # pairs: their clean and patch prompts
    batch = task.batches(model.tokenizer, rows, n=min(n or len(task), rows))[0]
    check_explained_variance(model, dicts, torch.cat([batch.clean, batch.patch]),
                             where=f"the first prompts of {task.name}")


def kind_submodules(kinds, model, dicts) -> list[str] | None:
    """The candidate submodules under --kinds (those with dictionaries, or all, of those kinds)."""
    if kinds is None:
        return None
    names = [s.name for s in model.all_submodules if s.kind in kinds and (not dicts or s.name in dicts)]
    if not names:
        raise UsageError(f"--kinds {','.join(kinds)} leaves no submodule with a dictionary")
    return names


def check_features(where, circuit, dicts) -> None:
    """Every feature node of ``circuit`` exists in the given dictionaries (else the ablation masks would index
    past a dictionary's width)."""
    for node in circuit.nodes:
        ref = circuit.ref(node)
        if ref.feature is None:
            continue
        if not dicts or ref.submodule not in dicts:
            raise UsageError(f"{where}: node {node!r} is a feature of {ref.submodule}'s dictionary, but no dictionary "
                             f"is given for {ref.submodule} (--dictionaries)")
        if ref.feature >= dicts[ref.submodule].width:
            raise UsageError(f"{where}: node {node!r}: feature {ref.feature} is beyond {ref.submodule}'s dictionary "
                             f"width {dicts[ref.submodule].width}")


def circuit_page(circuit, evaluation=None, title: str | None = None, dossiers=None, labels=None, **options) -> str:
    """A circuit's page (its views, notes, labels and feature cards), for writing with its JSON. ``options``:
    for :func:`featurecircuits.plots.circuit_sections` (groups, size limits)."""
    from ..plots import circuit_sections, page_html

    title = title or f"{circuit.metadata.get('method', '')} circuit · {circuit.metadata.get('model', '')}"
    return page_html(circuit_sections({title: circuit}, evaluations={title: evaluation}, dossiers=dossiers,
                                      labels=labels, **options), title=title)


def page(fig) -> str:
    """A figure as a self-contained page (as ``plots.write_html`` writes it), for writing with its JSON."""
    from ..plots import Section, figure_title, page_html

    title = figure_title(fig)
    return page_html([Section(title, fig)], title=title)
