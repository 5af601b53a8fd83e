"""``featurecircuits <subcommand>``: parses arguments and calls the API; the only place that prints."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .errors import UsageError
from .paths import DICTIONARY_ROOT
from .paths import ORGANISM_DIR as ORGANISM_MODEL_DIR
from .registry import METHODS, TASK_NAMES, parse_methods
from .report import table

# Nothing here imports torch at module level: ``featurecircuits --help`` and every check of options and
# input files answer before torch loads. Each command imports what it needs.

# --------------------------------------------------------------------------------------------------
# Option types: checked when the command line is parsed


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer ≥ {low}, got {value}")
        return value

    parse.__name__ = f"integer ≥ {low}"
    return parse


positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


def _finite(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0, got {text!r}")
    return value


def threshold(text: str) -> float:
    return _finite(text)


def thresholds_list(text: str) -> list[float]:
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"empty item in {text!r} (expected comma-separated numbers)")
    return [_finite(t) for t in items]


def rules(text: str):
    from .config import LRPConfig

    try:
        return LRPConfig.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def rule_sets(text: str) -> list:
    """``default;attention=ah`` → one LRPConfig per ``;``-separated rule set (compare sweeps them)."""
    return [rules(part) for part in text.split(";")]


def methods(text: str) -> list[str]:
    try:
        return parse_methods(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --------------------------------------------------------------------------------------------------
# Inputs and outputs: checked before any model is loaded


def _dictionaries_spec(args) -> str:
    """--dictionaries, or the default for --model (its known dictionary set, else component level)."""
    from .registry import default_dictionaries

    spec = getattr(args, "dictionaries", None)
    return spec if spec is not None else default_dictionaries(args.model)


def _input_paths(args) -> dict[str, Path]:
    """The files and folders this run reads (that exist), by what they are."""
    from .registry import NEURONS, NO_DICTIONARIES, ORGANISM

    out: dict[str, Path] = {}
    task = getattr(args, "task", None)
    if task and Path(task).exists():
        out["task file (--task)"] = Path(task)
    if getattr(args, "circuit", None):
        out["circuit file (--circuit)"] = Path(args.circuit)
    model = getattr(args, "model", None)
    if model == ORGANISM:
        out["organism model"] = ORGANISM_MODEL_DIR
    elif model and Path(model).exists():
        out["model (--model)"] = Path(model)
    if hasattr(args, "dictionaries") and model is not None:
        spec = _dictionaries_spec(args)
        if spec not in (NO_DICTIONARIES, NEURONS):
            for i, part in enumerate(spec.split("+")):  # FORMAT:TARGET[@options] specs, joined by '+'
                target = part.split(":", 1)[1] if ":" in part and not Path(part).exists() else part
                target = target.split("@", 1)[0] if not Path(target).exists() else target
                path = Path(target) if Path(target).exists() else DICTIONARY_ROOT / target
                out["dictionaries" + (f" ({part})" if i else "")] = path
    return {k: v for k, v in out.items() if v.exists()}


def _same(a: Path, b: Path) -> bool:
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    if ra == rb or ra.startswith(rb.rstrip(os.sep) + os.sep):  # a is b, or inside folder b
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(args, files: dict[str, str | None], folders: dict[str, tuple[str | None, list[str]]] | None = None,
                  extra_inputs: dict[str, Path] | None = None) -> None:
    """Refuse, before any work, outputs that cannot be written or that would overwrite an input of this run
    or another of its outputs. ``files``: option → output file; ``folders``: option → (folder, the file
    names written into it)."""
    inputs = {**_input_paths(args), **(extra_inputs or {})}
    written: dict[str, tuple[str, Path]] = {}  # realpath → (option, path)

    def claim(option: str, path: Path):
        for what, src in inputs.items():
            if _same(path, src):
                raise UsageError(f"{option} {path} would overwrite the {what} ({src}); write it elsewhere")
        real = os.path.realpath(path)
        if real in written:
            raise UsageError(f"{option} and {written[real][0]} both name {path}; give them different files")
        written[real] = (option, path)

    for option, name in files.items():
        if not name:
            continue
        path = Path(name)
        if path.is_dir():
            raise UsageError(f"{option} {path} is a directory; give a file name (e.g. {path / 'out'}...)")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"{option} {path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {path}: folder {parent} is not writable")
        if path.exists() and not os.access(path, os.W_OK):
            raise UsageError(f"{option} {path} exists and is read-only")
        claim(option, path)
    for option, (name, names) in (folders or {}).items():
        if not name:
            continue
        folder = Path(name)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{option} {folder} is a file; give a folder")
        existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {folder}: {existing} is not writable")
        if not names:  # the folder is ours as a whole (a run folder)
            claim(option, folder)
            for what, src in inputs.items():
                if _same(src, folder):
                    raise UsageError(f"{option} {folder} holds the {what} ({src}); give another folder")
        for n in names:
            target = folder / n
            if target.is_dir():
                raise UsageError(f"{option} {folder}: {target} is a directory")
            claim(option, target)


def check_model_option(model: str | None) -> None:
    """A --model that names a path must be a model folder (with config.json) or a .gguf file; checked before
    anything loads (a missing folder would otherwise be tried as a hub id, with network retries)."""
    from .registry import GGUF_PACKAGES, ORGANISM

    if model is None or model == ORGANISM or model in GGUF_PACKAGES:
        return
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise UsageError(f"--model {model}: GGUF file does not exist")
        return
    if path.is_absolute() or model.startswith((".", "~")) or path.exists() or model.count("/") > 1:
        if not path.exists():
            raise UsageError(f"--model {model}: no such folder (give 'organism', a model folder with config.json, "
                             f"a hub id such as EleutherAI/pythia-70m-deduped, 'smollm2' or a .gguf file)")
        if not path.is_dir():
            raise UsageError(f"--model {model} is a file, not a model folder (or a .gguf file)")
        if not (path / "config.json").is_file():
            raise UsageError(f"--model {model}: the folder has no config.json, so it is not a model folder")


def _run_folder(args, out: str) -> Path:
    """The run folder (--run-dir, or OUT.run beside the output), checked before any work: --resume needs an
    interrupted run there, and a folder that is not a run folder is never reused."""
    folder = Path(args.run_dir) if getattr(args, "run_dir", None) else Path(f"{out}.run")
    manifest = folder / "run.json"
    if getattr(args, "resume", False) and not manifest.is_file():
        raise UsageError(f"--resume: no interrupted run to continue in {folder} (no run.json)")
    if folder.is_dir() and not manifest.is_file() and any(folder.iterdir()):
        raise UsageError(f"run folder {folder} exists and is not a featurecircuits run folder; give --run-dir")
    return folder


def _file_task(args):
    """A --task that is a file, loaded and checked against the task schema (no model needed); None for a name."""
    from .tasks import load_task

    path = Path(args.task)
    if path.is_dir():
        raise UsageError(f"--task {path} is a directory; give a JSONL file or a task name ({', '.join(TASK_NAMES)})")
    if path.is_file():
        task = load_task(path)
        n = getattr(args, "n_examples", None)
        if n is not None and n > len(task) and {"--n-examples", "--n"} & getattr(args, "given", set()):
            print(f"note: {path} holds {len(task)} pairs; --n-examples {n} uses all {len(task)}", file=sys.stderr)
        return task
    if args.task in TASK_NAMES:
        return None
    raise UsageError(f"--task {args.task!r} is neither a file nor a task name; task names: {', '.join(TASK_NAMES)}")


KINDS = ("embed", "z", "attn", "mlp", "resid")
KINDS_HELP = ("candidate submodule kinds among embed, z (attention output projection's input, hook_z), attn, mlp, "
              "resid, e.g. attn,mlp (default: every submodule with a dictionary; without dictionaries all but z); "
              "kinds left out are neither candidates nor ablated. At component level every resid_l is a cut of the "
              "whole model, so leave resid out to find attention/MLP circuits")


def parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(","))
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"unknown submodule kind(s) {', '.join(bad) or repr(text)}; "
                                         f"valid: {', '.join(KINDS)}")
    return kinds


def _kind_submodules(args, model, dicts) -> list[str] | None:
    """The candidate submodules under --kinds (those with dictionaries, or all, of those kinds)."""
    kinds = getattr(args, "kinds", None)
    if kinds is None:
        return None
    names = [s.name for s in model.all_submodules if s.kind in kinds and (not dicts or s.name in dicts)]
    if not names:
        raise UsageError(f"--kinds {','.join(kinds)} leaves no submodule with a dictionary")
    return names


def _placement(args) -> dict:
    """--dtype, --device and --device-map as load_model options (device_map: 'auto' or a JSON object)."""
    import json

    out = {"dtype": getattr(args, "dtype", None), "device": getattr(args, "device", None)}
    spec = getattr(args, "device_map", None)
    if spec is not None:
        try:
            out["device_map"] = json.loads(spec) if spec.lstrip().startswith("{") else spec
        except json.JSONDecodeError as exc:
            raise UsageError(f"--device-map {spec!r} is not 'auto' or a JSON object ({exc.msg})") from None
        out["offload_folder"] = getattr(args, "offload_folder", None)
    return out


def _placement_options(p) -> None:
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="load the model (and its dictionaries) in this dtype (default: as stored)")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: where the model loads)")
    p.add_argument("--device-map", default=None,
                   help="accelerate device map: 'auto' or a JSON object of module path → device/'cpu'/'disk', to "
                        "shard a model across GPUs or offload it; dictionaries go with their submodule")
    p.add_argument("--offload-folder", default=None, help="folder for weights offloaded to 'disk' by --device-map")


def _load(args):
    from .dictionaries import load_dictionaries
    from .models import load_model
    from .registry import NO_DICTIONARIES

    model = load_model(args.model, **_placement(args))
    start = getattr(args, "start_layer", None)
    if start is not None and start >= model.n_layers:
        raise UsageError(f"--start-layer {start} is beyond the model's {model.n_layers} layers "
                         f"(0 … {model.n_layers - 1})")
    dicts = None
    spec = _dictionaries_spec(args)
    if spec != NO_DICTIONARIES:
        dicts = load_dictionaries(spec, model)
    return model, dicts


def _task(args, model, loaded=None):
    """The task: a file already loaded by ``_file_task`` (now checked against the tokenizer), or a task name
    generated with the word lists that suit the model."""
    from .tasks import Task, make_task, n_distinct, validate
    from .words import words_for

    if loaded is None:
        loaded = _file_task(args)  # None for a task name
    if loaded is not None:
        validate(loaded, model.tokenizer, source=str(args.task))
        return loaded
    words = words_for(model.tokenizer)
    n = n_distinct(args.task, words, tokenizer=model.tokenizer)
    if args.n_examples > n:
        if {"--n-examples", "--n"} & getattr(args, "given", set()):
            raise UsageError(f"--n-examples {args.n_examples}: task {args.task} has only {n} distinct pairs with "
                             f"the {words} word lists; ask for at most {n}")
        print(f"note: task {args.task} has {n} distinct pairs with the {words} word lists; using all {n}",
              file=sys.stderr)
        args.n_examples = n
    task = Task(args.task, make_task(args.task, args.n_examples, seed=args.seed, words=words,
                                     tokenizer=model.tokenizer),
                source={"generator": args.task, "n": args.n_examples, "seed": args.seed, "words": words})
    validate(task, model.tokenizer, source=f"generated {args.task}")
    return task


def _html(fig) -> str:
    """A figure as a self-contained page (as ``plots.write_html`` writes it), for writing with its JSON."""
    import html

    from .plots import Section, page_html

    title = html.unescape((fig.layout.title.text or "featurecircuits").split("<br>")[0])
    return page_html([Section(title, fig)], title=title)


def _checkpoint(args, out: str, key: dict):
    """The run folder of a long run (beside ``out``, or --run-dir)."""
    from .checkpoint import RunDir

    folder = _run_folder(args, out)
    if not args.resume and (folder / "run.json").is_file():
        print(f"note: starting afresh; the interrupted run in {folder} is discarded (--resume continues it)",
              file=sys.stderr)
    run = RunDir(folder, key, resume=args.resume)
    run.on_save = _raise_if_signalled
    args.run_folder = folder
    return run


def _run_key(args, command: str, task, dicts) -> dict:
    from .checkpoint import fingerprint

    skip = {"func", "out", "html", "resume", "run_dir", "verbose", "debug", "run_folder", "given"}
    return {"command": command, **{k: str(v) for k, v in vars(args).items() if k not in skip},
            "examples": fingerprint(task.examples),
            "dictionary_hashes": {k: d.source.hash for k, d in (dicts or {}).items()}}


def cmd_discover(args) -> int:
    check_outputs(args, {"--out": args.out, "--html": args.html}, {"--run-dir": (str(_run_folder(args, args.out)), [])})
    loaded = _file_task(args)

    from .circuit import discover
    from .fileio import atomic_write_many
    from .plots import circuit_figure

    model, dicts = _load(args)
    task = _task(args, model, loaded)
    config = _attribution(args)
    run = _checkpoint(args, args.out, _run_key(args, "discover", task, dicts))
    start = time.perf_counter()
    circuit = discover(model, dicts, task, config=config, node_threshold=args.node_threshold,
                       edge_threshold=args.edge_threshold, top_k=args.top_k, aggregation=args.aggregation,
                       n_examples=args.n_examples, batch_size=args.batch_size, progress=True, checkpoint=run,
                       submodules=_kind_submodules(args, model, dicts))
    files = {args.out: circuit.to_json() + "\n"}
    if args.html:
        tokens = None  # with positions kept, the columns show the examples' tokens (or "pos k" where they differ)
        if args.aggregation == "none" and model.tokenizer is not None and hasattr(task, "examples"):
            tokens = [model.tokenizer.convert_ids_to_tokens(model.tokenizer.encode(e["clean_prefix"]))
                      for e in task.examples[:args.n_examples]]
        files[args.html] = _html(circuit_figure(circuit, tokens=tokens))
    atomic_write_many(files)  # both new, or (interrupted) both as they were
    run.remove()
    print(f"{len(circuit)} nodes, {circuit.n_edges} edges in {time.perf_counter() - start:.1f} s → {args.out}")
    if args.html:
        print(f"graph → {args.html}")
    return 0


def _attribution(args, method: str | None = None):
    from .config import AttributionConfig

    return AttributionConfig(method=method or getattr(args, "method", "relp"), direction=args.direction,
                             lrp=args.rules, ig_steps=args.ig_steps)


def _ablation(args):
    from .config import AblationConfig

    return AblationConfig(ablation=args.ablation, errors=args.errors, start_layer=args.start_layer,
                          include_embed=not args.no_embed)


def cmd_evaluate(args) -> int:
    check_outputs(args, {"--out": args.out})
    loaded = _file_task(args)

    import json
    from dataclasses import asdict

    from .circuit import Circuit
    from .evaluation import evaluate
    from .fileio import atomic_write_text

    circuit = Circuit.from_json(args.circuit)  # the schema checked before the model loads
    model, dicts = _load(args)
    try:
        circuit.check_model(model)
    except ValueError as exc:
        raise UsageError(f"{args.circuit}: {exc}") from None
    check_features(args.circuit, circuit, dicts)
    result = evaluate(model, dicts, circuit, _task(args, model, loaded), config=_ablation(args),
                      n_examples=args.n_examples, batch_size=args.batch_size)
    row = {"nodes": result.n_nodes, "edges": result.n_edges, "faithfulness": f"{result.faithfulness:.3f}",
           "completeness": f"{result.completeness:.3f}", "m(C)": f"{result.m_circuit:.3f}",
           "m(empty)": f"{result.m_empty:.3f}", "m(M)": f"{result.m_full:.3f}"}
    print(table([row], list(row)))
    if args.out:
        atomic_write_text(args.out, json.dumps(asdict(result), indent=1))
    return 0


def check_features(where, circuit, dicts) -> None:
    """Every feature node of ``circuit`` exists in the given dictionaries (else the ablation masks would index
    past a dictionary's width)."""
    from .nodes import parse_node_id

    for node in circuit.nodes:
        sub, part, feat, _ = parse_node_id(node)
        if feat is None:
            continue
        if not dicts or sub not in dicts:
            raise UsageError(f"{where}: node {node!r} is a feature of {sub}'s dictionary, but no dictionary is "
                             f"given for {sub} (--dictionaries)")
        if feat >= dicts[sub].width:
            raise UsageError(f"{where}: node {node!r}: feature {feat} is beyond {sub}'s dictionary width "
                             f"{dicts[sub].width}")


def cmd_curve(args) -> int:
    check_outputs(args, {"--out": args.out, "--html": args.html}, {"--run-dir": (str(_run_folder(args, args.out)), [])})
    loaded = _file_task(args)

    import json

    from .evaluation import faithfulness_curve
    from .fileio import atomic_write_many
    from .plots import curve_figure

    model, dicts = _load(args)
    task = _task(args, model, loaded)
    run = _checkpoint(args, args.out, _run_key(args, "curve", task, dicts))
    curve = faithfulness_curve(model, dicts, task, methods=args.methods,
                               attribution=_attribution(args, args.methods[0]), thresholds=args.thresholds,
                               relative=not args.absolute, config=_ablation(args), n_examples=args.n_examples,
                               batch_size=args.batch_size, progress=True, checkpoint=run,
                               submodules=_kind_submodules(args, model, dicts))
    rows = [{"method": m, "AUC faithfulness": f"{curve.auc(m):.3f}",
             "AUC completeness": f"{curve.auc(m, 'completeness'):.3f}"} for m in curve.methods()]
    print(table(rows, list(rows[0])))
    files = {args.out: json.dumps(curve.to_dict(), indent=1)}
    if args.html:
        files[args.html] = _html(curve_figure(curve))
    atomic_write_many(files)
    run.remove()
    return 0


def cmd_plot(args) -> int:
    check_outputs(args, {"--out": args.out})
    from .circuit import Circuit
    from .plots import circuit_figure, write_html

    circuit = Circuit.from_json(args.circuit)
    if args.node_threshold is not None or args.edge_threshold is not None or args.top_k is not None:
        circuit = circuit.prune(node_threshold=args.node_threshold, edge_threshold=args.edge_threshold,
                                top_k=args.top_k)
    write_html(circuit_figure(circuit, title=args.title), args.out)
    print(f"{len(circuit)} nodes, {circuit.n_edges} edges → {args.out}")
    return 0


def cmd_export(args) -> int:
    check_outputs(args, {}, {"--out": (args.out, ["graph-metadata.json"])})
    if args.task is not None and not Path(args.task).is_file() and args.task not in TASK_NAMES:
        _file_task(args)  # raises, naming --task
    import json

    from .circuit import Circuit
    from .export import export_attribution_graph

    circuit = Circuit.from_json(args.circuit)
    task = args.task
    if task is not None and not Path(task).is_file():  # a task name: generated as the circuit's was
        task = {"name": task, "seed": args.seed, **({"n": args.n_examples} if args.n_examples else {})}
    path = export_attribution_graph(circuit, args.out, example=args.example, model=args.model,
                                    dictionaries=args.dictionaries or "auto", task=task, slug=args.slug,
                                    edge_threshold=args.edge_threshold)
    data = json.loads(path.read_text())
    print(f"example {args.example}: {len(data['nodes'])} nodes, {len(data['links'])} links → {path} "
          f"(and {path.parent / 'graph-metadata.json'}); view with circuit-tracer's local server, see docs/export.md")
    return 0


def cmd_compare(args) -> int:
    check_outputs(args, {}, {"--out": (args.out, ["comparison.json", "comparison.html"]),
                             "--run-dir": (str(_run_folder(args, args.out)), [])})
    loaded = _file_task(args)
    import json
    from pathlib import Path

    from .compare import PAPER_TABLE5, compare
    from .plots import comparison_figure
    from .config import LRPConfig
    from .fileio import atomic_write_many
    from .models import load_model
    from .tasks import Task

    model = load_model(args.model, **_placement(args))
    task = _task(args, model, loaded)
    sweep = args.rules or [LRPConfig()]
    args.rules = sweep[0]
    # Batches per template (IOI) or variant, so that figures can be given per template as well.
    examples = task.examples[:args.n_examples]
    key = lambda e: e.get("template") or e.get("variant") or "all"  # noqa: E731
    batches, groups = [], []
    for name in dict.fromkeys(map(key, examples)):
        part = Task(task.name, [e for e in examples if key(e) == name]).batches(model.tokenizer, args.batch_size)
        batches += part
        groups += [name] * len(part)
    run = _checkpoint(args, args.out, {**_run_key(args, "compare", task, None),
                                       "rules": [r.spec for r in sweep]})
    comp = compare(model, batches, methods=args.methods, normalized=args.normalized, task_name=task.name,
                   attribution=_attribution(args, args.methods[0]), rules=sweep, groups=groups, progress=True,
                   checkpoint=run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_many({out / "comparison.json": json.dumps(comp.to_dict(), indent=1),
                       out / "comparison.html": _html(comparison_figure(comp))})
    run.remove()
    pooling_names = {"cell_means": "cell means", "pairs_x_cells": "pairs × cells"}

    def pcc_rows(by_pooling, first=None):
        return [{**(first or {}), "component": kind, "pooling": pooling_names[pooling],
                 **{f"PCC {m}": f"{by_pooling[pooling][m][kind]:.3f}" for m in comp.methods}}
                for kind in ("resid", "attn", "mlp") for pooling in pooling_names]

    rows = pcc_rows(comp.pcc_by_pooling)
    print(f"{comp.model} · {comp.task} · {comp.n_pairs} pairs: Pearson correlation with activation patching "
          "(cell means: each layer × position cell averaged over pairs; pairs × cells: nothing averaged)\n")
    print(table(rows, list(rows[0])))
    if comp.by_group:
        rows = [r for name, g in comp.by_group.items()
                for r in pcc_rows(g, {"group": f"{name} ({g['n_pairs']})"})]
        print("\nPer template:\n")
        print(table(rows, list(rows[0])))
    print("\nThe RelP paper's Table 5 (IOI): " + "; ".join(
        f"{name} {kind} AtP {v['atp']:.3f} / RelP {v['relp']:.3f}"
        for name, kinds in PAPER_TABLE5.items() for kind, v in kinds.items()))
    print(f"wrote {out / 'comparison.json'} and {out / 'comparison.html'}")
    return 0


DEMO_FILES = ["sva-rc_relp.json", "sva-rc_ig.json", "sva-rc_atp.json", "ioi_relp.json", "sva-rc_curve.json",
              "circuits.html"]


def cmd_demo(args) -> int:
    check_outputs(args, {}, {"--out": (args.out, DEMO_FILES)})
    from .demo import run_demo

    return run_demo(args.out, n_examples=args.n_examples)


def cmd_tasks_make(args) -> int:
    check_outputs(args, {"--out": args.out})
    from .tasks import make_task, save_task

    examples = make_task(args.name, args.n, seed=args.seed, words=args.words)
    path = save_task(examples, args.out)
    print(f"wrote {len(examples)} {args.name} pairs to {path}")
    return 0


def cmd_organism_train(args) -> int:
    if args.out and args.replace_shipped:
        raise UsageError("give --out DIR (a new folder) or --replace-shipped, not both")
    if not args.out and not args.replace_shipped:
        raise UsageError("--out DIR is required (a new folder for DIR/model and DIR/dictionaries); "
                         "--replace-shipped overwrites the shipped organism instead")
    if args.out:
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"--out {out} exists and is not an empty folder; give a new folder")
        check_outputs(args, {}, {"--out": (args.out, ["model", "dictionaries"])})
    if args.saes_only and args.out:
        raise UsageError("--saes-only retrains the SAEs of a saved model; it needs --replace-shipped")

    from .organism.card import write_card
    from .organism.train import OrganismConfig, build

    model_dir, dict_dir = _organism_dirs(args)
    cfg = OrganismConfig(seed=args.seed, **({"steps": args.steps} if args.steps else {}),
                         **({"sae_steps": args.sae_steps} if args.sae_steps else {}))
    info = build(model_dir, dict_dir, cfg, progress=True, saes_only=args.saes_only)
    print(f"model: {Path(model_dir)} ({info['seconds_model']:.0f} s), SAEs: {Path(dict_dir)} "
          f"({info['seconds_saes']:.0f} s)")
    if not args.no_card:
        write_card(model_dir, dict_dir)
        print(f"card: {Path(model_dir) / 'README.md'}")
    return 0


def cmd_organism_card(args) -> int:
    if args.out and not (Path(args.out) / "model").is_dir():
        raise UsageError(f"--out {args.out}: no model folder {Path(args.out) / 'model'} (give the DIR of "
                         "`organism train --out DIR`)")

    from .organism.card import write_card

    model_dir, dict_dir = _organism_dirs(args)
    figures = write_card(model_dir, dict_dir)
    rows = [{"task": t, "group": g, "acc clean": f"{r['acc_clean']:.1%}", "LD clean": f"{r['ld_clean']:.2f}",
             "acc patch": f"{r['acc_patch']:.1%}", "LD patch": f"{r['ld_patch']:.2f}"}
            for t, groups in figures["tasks"].items() for g, r in groups.items()]
    print(table(rows, list(rows[0])))
    print(f"card written to {model_dir}/README.md")
    return 0


def cmd_plan(args) -> int:
    import json
    import re

    from .dictionaries import dictionary_widths
    from .plan import plan

    if args.dictionaries and args.width:
        raise ValueError("give --dictionaries (widths read from their config.json files) or --width, not both")
    widths = None
    if args.dictionaries:
        widths = dictionary_widths(args.dictionaries)
    elif args.width:
        if args.width < 1:
            raise ValueError(f"--width must be positive, got {args.width}")
        widths = args.width
    if widths is not None and args.submodules:
        names = [n.strip() for n in args.submodules.split(",") if n.strip()]
        if isinstance(widths, int):
            widths = dict.fromkeys(names, widths)
        else:
            unknown = [n for n in names if n not in widths]
            if unknown:
                raise ValueError(f"no dictionary for {', '.join(unknown)}; found: {', '.join(widths)}")
            widths = {n: widths[n] for n in names}
    if isinstance(widths, dict):
        odd = [n for n in widths if not re.fullmatch(r"embed|(z|attn|mlp|resid)_\d+", n)]
        if odd:
            raise ValueError(f"unknown submodule name(s) {', '.join(odd)} (use embed, z_L, attn_L, mlp_L, resid_L)")
    p = plan(args.model, widths, args.batch, args.tokens, method=args.method, dtype=args.dtype,
             logit_positions=args.logit_positions, l0=args.l0)
    print(json.dumps(p.to_dict(), indent=1) if args.json else p.table())
    return 0


def _organism_dirs(args):
    if args.out:
        return f"{args.out}/model", f"{args.out}/dictionaries"
    return str(ORGANISM_MODEL_DIR), str(DICTIONARY_ROOT / "organism")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (flags, options without default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or not action.option_strings or action.default is None
                or action.default is False or action.default is argparse.SUPPRESS
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        return text + " (default: %(default)s)"


def _shared_options() -> argparse.ArgumentParser:
    """-v and --debug, accepted before or after the subcommand."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress details")
    shared.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback of an unexpected error")
    return shared


class Parser(argparse.ArgumentParser):
    """Every (sub)command shows defaults and takes -v/--debug."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        if kwargs.get("add_help", True):
            kwargs.setdefault("parents", [_shared_options()])
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from .words import WORD_LISTS

    parser = Parser(prog="featurecircuits", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(verbose=False, debug=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="the default demo: circuits in the organism, offline")
    demo.add_argument("--out", default="out/demo", help="folder for the circuits, graphs and curves")
    demo.add_argument("--n-examples", type=positive_int, default=48, help="held-out pairs per task")
    demo.set_defaults(func=cmd_demo)

    def resumable(p):
        p.add_argument("--run-dir", help="folder keeping completed batches/methods while the run goes "
                                          "(default: beside --out, OUT.run); removed when the run finishes")
        p.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from its run folder (same command and options)")

    def common(p, *, task=True):
        p.add_argument("--model", default="organism",
                       help="'organism', a local directory, a hub id, 'smollm2' or a .gguf file")
        p.add_argument("--dictionaries", default=None,
                       help="dictionary root ('organism', a folder, a published name or hub repo id), "
                            "saelens:<folder-or-release>, gemma-scope-res|mlp|att:<folder>[@l0=N,width=W] (several "
                            "joined by '+'; see docs/dictionaries.md), 'neurons' "
                            "(identity baseline) or 'none' (component level); default: the set known for --model "
                            "(organism → organism, EleutherAI/pythia-70m-deduped → pythia-70m-deduped), else none")
        _placement_options(p)
        if task:
            p.add_argument("--task", required=True,
                           help=f"a JSONL file or a task name ({', '.join(TASK_NAMES)})")
            p.add_argument("--n-examples", type=positive_int, default=100,
                           help="use the first N pairs of the task (a task name generates N)")
            p.add_argument("--batch-size", type=positive_int, default=32, help="pairs per forward/backward pass")
            p.add_argument("--seed", type=int, default=0, help="seed for generated tasks")

    def ablation(p):
        p.add_argument("--ablation", choices=["mean", "zero", "resample"], default="mean",
                       help="what ablated nodes are set to: their mean over the patch prompts, zero, or another "
                            "example's patch value")
        p.add_argument("--errors", choices=["ablate", "keep", "remove"], default="ablate",
                       help="error terms: ablated like features, always kept, or always zeroed")
        p.add_argument("--start-layer", type=nonnegative_int, default=0,
                       help="never ablate submodules of earlier layers (Sparse Feature Circuits uses 2)")
        p.add_argument("--no-embed", action="store_true", help="never ablate the embedding")

    def attribution(p, *, direction=True, sweep=False):
        rules_help = ("LRP rules for relp: default (the family's), gradient, paper, then key=value overrides, "
                      "e.g. 'attention=ah' or 'gradient,gate=half' (keys: norm, act, linear, attention, gate, "
                      "qk_norm, epsilon, gamma)")
        if sweep:
            p.add_argument("--rules", type=rule_sets, action="extend", default=None,
                           help=rules_help + "; repeat --rules or separate rule sets with ';' to sweep them "
                                             "(AP is computed once and reused)")
        else:
            p.add_argument("--rules", type=rules, default="default", help=rules_help)
        p.add_argument("--ig-steps", type=positive_int, default=10, help="integrated-gradients steps")
        if direction:
            p.add_argument("--direction", choices=["noising", "denoising"], default="noising",
                           help="noising: scores on the clean run, patch values patched in (Sparse Feature "
                                "Circuits); denoising: the reverse")

    disc = sub.add_parser("discover", help="find a circuit and save it as JSON (and HTML)")
    common(disc)
    disc.add_argument("--method", choices=list(METHODS), default="relp", help="attribution method")
    disc.add_argument("--node-threshold", type=threshold, default=0.1, help="keep nodes with |mean score| ≥ this")
    disc.add_argument("--edge-threshold", type=threshold, default=0.01,
                      help="keep edges with |weight| ≥ this (the demo uses 0.02)")
    disc.add_argument("--top-k", type=nonnegative_int, help="keep the K nodes with the largest |score| instead")
    disc.add_argument("--kinds", type=parse_kinds, default=None,
                      help=KINDS_HELP)
    disc.add_argument("--aggregation", choices=["sum", "none"], default="sum",
                      help="sum node scores over positions, or keep one node per position")
    attribution(disc)
    disc.add_argument("--out", required=True, help="circuit JSON file")
    disc.add_argument("--html", help="also write the interactive graph here")
    resumable(disc)
    disc.set_defaults(func=cmd_discover)

    ev = sub.add_parser("evaluate", help="faithfulness and completeness of a saved circuit")
    common(ev)
    ablation(ev)
    ev.add_argument("--circuit", required=True, help="circuit JSON file (from discover)")
    ev.add_argument("--out", help="result JSON file")
    ev.set_defaults(func=cmd_evaluate)

    cur = sub.add_parser("curve", help="faithfulness vs circuit size for several methods")
    common(cur)
    ablation(cur)
    cur.add_argument("--methods", type=methods, default="relp,ig,atp",
                     help=f"comma-separated methods ({', '.join(METHODS)})")
    cur.add_argument("--thresholds", type=thresholds_list,
                     help="comma-separated; default logspace(-4, 0, 15) × the largest score")
    cur.add_argument("--absolute", action="store_true", help="thresholds are absolute scores")
    cur.add_argument("--kinds", type=parse_kinds, default=None,
                     help=KINDS_HELP)
    attribution(cur)
    cur.add_argument("--out", required=True, help="curve JSON file")
    cur.add_argument("--html", help="also write the plot here")
    resumable(cur)
    cur.set_defaults(func=cmd_curve)

    cmp = sub.add_parser("compare", help="AP vs AtP vs RelP at every layer and position (RelP paper, Table 5)")
    cmp.add_argument("--model", default="organism", help="'organism', 'smollm2', a .gguf file, a folder or hub id")
    _placement_options(cmp)
    cmp.add_argument("--task", default="ioi", help="a JSONL file or a task name")
    cmp.add_argument("--n", dest="n_examples", type=positive_int, default=100, help="number of pairs")
    cmp.add_argument("--batch-size", type=positive_int, default=25, help="pairs per batch")
    cmp.add_argument("--seed", type=int, default=0, help="seed for a generated --task")
    cmp.add_argument("--methods", type=methods, default="atp,relp", help="methods compared with AP")
    attribution(cmp, sweep=True)
    cmp.add_argument("--normalized", action="store_true",
                     help="metric (LD − LD_patch)/(LD_clean − LD_patch) instead of the logit difference")
    cmp.add_argument("--out", required=True, help="folder for comparison.json and comparison.html")
    resumable(cmp)
    cmp.set_defaults(func=cmd_compare)

    plot = sub.add_parser("plot", help="interactive HTML graph of a saved circuit")
    plot.add_argument("--circuit", required=True, help="circuit JSON file")
    plot.add_argument("--out", required=True, help="HTML file")
    plot.add_argument("--title", help="page title (default: from the circuit)")
    plot.add_argument("--node-threshold", type=threshold, help="show only nodes with |score| ≥ this")
    plot.add_argument("--edge-threshold", type=threshold, help="show only edges with |weight| ≥ this")
    plot.add_argument("--top-k", type=nonnegative_int, help="show only the K nodes with the largest |score|")
    plot.set_defaults(func=cmd_plot)

    exp = sub.add_parser("export", help="one example of a circuit as an attribution graph "
                                        "(circuit-tracer's viewer, Neuronpedia)")
    exp.add_argument("--circuit", required=True, help="circuit JSON file")
    exp.add_argument("--example", type=nonnegative_int, default=0,
                     help="index into the task's examples, in file order")
    exp.add_argument("--format", choices=["attribution-graph"], default="attribution-graph", help="output format")
    exp.add_argument("--out", required=True, help="folder for <slug>.json and graph-metadata.json")
    exp.add_argument("--model", help="default: the circuit's model")
    exp.add_argument("--dictionaries", help="default: the circuit's dictionaries")
    exp.add_argument("--task", help="a JSONL file or a task name (default: the circuit's task)")
    exp.add_argument("--seed", type=int, default=0, help="seed of a generated --task")
    exp.add_argument("--n-examples", type=positive_int, help="examples generated for a --task name (default 100)")
    exp.add_argument("--slug", help="the graph's name (default model-task-method-exN)")
    exp.add_argument("--edge-threshold", type=threshold,
                     help="keep links with |weight| ≥ this (default: the circuit's)")
    exp.set_defaults(func=cmd_export)

    pl = sub.add_parser("plan", help="estimate peak memory from shapes alone (no weights loaded)")
    pl.add_argument("--model", required=True,
                    help="a hub id, a local model folder, a config.json file, or 'organism' (config only)")
    pl.add_argument("--dictionaries", help="dictionary root: widths come from its config.json files")
    pl.add_argument("--width", type=positive_int,
                    help="one dictionary width for every submodule (instead of --dictionaries)")
    pl.add_argument("--submodules", help="comma-separated submodules with dictionaries (default: all)")
    pl.add_argument("--batch", type=positive_int, required=True, help="prompt pairs per attribution call")
    pl.add_argument("--tokens", type=positive_int, required=True, help="tokens per prompt")
    pl.add_argument("--method", choices=["atp", "relp"], default="relp", help="attribution method")
    pl.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="dtype of the model and dictionaries")
    pl.add_argument("--logit-positions", type=int, default=1,
                    help="final positions whose logits the metric reads (default 1, the logit difference; 0: all)")
    pl.add_argument("--l0", type=float, default=None,
                    help="features active per token in either run: plan the sparse path that discover and curve "
                         "run (default: the dense path, an upper bound)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(func=cmd_plan)

    tasks = sub.add_parser("tasks", help="task data").add_subparsers(dest="tasks_command", required=True)
    make = tasks.add_parser("make", help="generate clean/patch pairs as JSONL")
    make.add_argument("name", choices=TASK_NAMES, help="the task")
    make.add_argument("--n", type=positive_int, default=100,
                      help="number of distinct pairs (at most the number the word lists allow)")
    make.add_argument("--seed", type=int, default=0, help="random seed")
    make.add_argument("--words", choices=list(WORD_LISTS), default="organism",
                      help="word lists: the organism's (held-out combinations) or single tokens for Pythia")
    make.add_argument("--out", required=True, help="JSONL file (its folder must exist)")
    make.set_defaults(func=cmd_tasks_make)

    org = sub.add_parser("organism", help="the bundled model organism").add_subparsers(
        dest="organism_command", required=True)
    train = org.add_parser("train", help="train the model and its SAEs from a seed, then write the card")
    train.add_argument("--out", help="a new folder: writes DIR/model and DIR/dictionaries (required unless "
                                      "--replace-shipped)")
    train.add_argument("--replace-shipped", action="store_true",
                       help="overwrite the shipped organism (models/organism, dictionaries/organism) instead")
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--steps", type=positive_int, help="model training steps (default 3000)")
    train.add_argument("--sae-steps", type=positive_int, help="SAE training steps (default 1200)")
    train.add_argument("--saes-only", action="store_true",
                       help="keep the saved model, retrain the SAEs (with --replace-shipped)")
    train.add_argument("--no-card", action="store_true", help="do not measure the model and write its card")
    train.set_defaults(func=cmd_organism_train)
    card = org.add_parser("card", help="measure the organism and write its model card")
    card.add_argument("--out", help="the DIR given to `organism train --out` (default: shipped)")
    card.set_defaults(func=cmd_organism_card)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (temporary files removed) but exiting 143."""


_SIGNALLED: list[int] = []  # signals received; raised again at the next checkpoint should the first be swallowed


def _on_signal(signum, frame):
    _SIGNALLED.append(signum)
    raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _raise_if_signalled() -> None:
    """A KeyboardInterrupt raised inside a destructor or callback is printed and dropped by Python; the run
    then stops at its next checkpoint instead."""
    if _SIGNALLED:
        raise _Terminated() if _SIGNALLED[0] == signal.SIGTERM else KeyboardInterrupt()


def _own_handler(record: logging.LogRecord) -> bool:
    """Records of libraries that print through their own handler (huggingface_hub, transformers, once they
    have configured it) are not printed again by ours: that printed each offline-retry warning twice."""
    library = record.name.split(".", 1)[0]
    return library not in ("huggingface_hub", "transformers") or not logging.getLogger(library).handlers


def setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    for handler in root.handlers:
        if _own_handler not in handler.filters:
            handler.addFilter(_own_handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text += f": {exc.filename}"
    return text


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 2 a user error (one line: bad option, input or output); 1 an unexpected error
    (a short message; --debug prints the traceback); 130 interrupted (143 on SIGTERM)."""
    args = build_parser().parse_args(argv)  # argparse errors exit 2 with the usage line
    args.given = {a.split("=", 1)[0] for a in (sys.argv[1:] if argv is None else argv) if a.startswith("--")}
    setup_logging(args.verbose)
    previous = {}
    _SIGNALLED.clear()
    if threading_main():
        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.command in ("discover", "evaluate", "curve", "compare", "export"):
            check_model_option(args.model)
        return args.func(args)
    except KeyboardInterrupt as exc:
        run = getattr(args, "run_folder", None)
        saved = f"; completed work is kept in {run}: rerun the same command with --resume to continue" \
            if run is not None and Path(run).is_dir() else ""
        print(f"{'terminated' if isinstance(exc, _Terminated) else 'interrupted'}{saved}", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except (ValueError, OSError) as exc:  # UsageError, config errors, missing or unwritable files
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"error: unexpected {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        if not args.debug:
            print("rerun with --debug for the traceback (and please report it)", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
