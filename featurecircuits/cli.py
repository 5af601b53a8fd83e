"""``featurecircuits <subcommand>``: parses arguments and calls the API; the only place that prints."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    sep = "  ".join("-" * widths[c] for c in columns)
    body = ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([line, sep, *body])


def _load(args):
    from .dictionaries import load_dictionaries
    from .models import load_model

    model = load_model(args.model)
    dicts = None
    if getattr(args, "dictionaries", None) not in (None, "none"):
        dicts = load_dictionaries(args.dictionaries, model)
    return model, dicts


def _task(args, model):
    """A JSONL path, or a task name generated with the word lists that suit the model."""
    from pathlib import Path

    from .tasks import TASK_NAMES, Task, load_task, make_task, validate

    if Path(args.task).is_file():
        return load_task(args.task, model.tokenizer)
    if args.task in TASK_NAMES:
        words = "organism" if model.name == "organism" else "pythia"
        task = Task(args.task, make_task(args.task, args.n_examples, seed=args.seed, words=words))
        validate(task, model.tokenizer, source=f"generated {args.task}")
        return task
    raise ValueError(f"task {args.task!r} is neither a file nor one of {', '.join(TASK_NAMES)}")


def cmd_discover(args) -> int:
    from .circuit import discover
    from .plots import circuit_figure, write_html

    model, dicts = _load(args)
    start = time.perf_counter()
    circuit = discover(model, dicts, _task(args, model), method=args.method, node_threshold=args.node_threshold,
                       edge_threshold=args.edge_threshold, top_k=args.top_k, aggregation=args.aggregation,
                       n_examples=args.n_examples, batch_size=args.batch_size, ig_steps=args.ig_steps,
                       direction=args.direction, progress=True)
    circuit.to_json(args.out)
    print(f"{len(circuit)} nodes, {circuit.n_edges} edges in {time.perf_counter() - start:.1f} s → {args.out}")
    if args.html:
        write_html(circuit_figure(circuit), args.html)
        print(f"graph → {args.html}")
    return 0


def _ablation(args):
    from .evaluation import AblationConfig

    return AblationConfig(ablation=args.ablation, errors=args.errors, start_layer=args.start_layer,
                          include_embed=not args.no_embed)


def cmd_evaluate(args) -> int:
    import json
    from dataclasses import asdict

    from .circuit import Circuit
    from .evaluation import evaluate
    from .fileio import atomic_write_text

    model, dicts = _load(args)
    circuit = Circuit.from_json(args.circuit, model=model)
    result = evaluate(model, dicts, circuit, _task(args, model), config=_ablation(args),
                      n_examples=args.n_examples, batch_size=args.batch_size)
    row = {"nodes": result.n_nodes, "edges": result.n_edges, "faithfulness": f"{result.faithfulness:.3f}",
           "completeness": f"{result.completeness:.3f}", "m(C)": f"{result.m_circuit:.3f}",
           "m(empty)": f"{result.m_empty:.3f}", "m(M)": f"{result.m_full:.3f}"}
    print(_table([row], list(row)))
    if args.out:
        atomic_write_text(args.out, json.dumps(asdict(result), indent=1))
    return 0


def cmd_curve(args) -> int:
    import json

    from .evaluation import faithfulness_curve
    from .fileio import atomic_write_text
    from .plots import curve_figure, write_html

    model, dicts = _load(args)
    thresholds = [float(t) for t in args.thresholds.split(",")] if args.thresholds else None
    curve = faithfulness_curve(model, dicts, _task(args, model), methods=args.methods.split(","),
                               thresholds=thresholds, relative=not args.absolute, config=_ablation(args),
                               n_examples=args.n_examples, batch_size=args.batch_size, ig_steps=args.ig_steps,
                               progress=True)
    rows = [{"method": m, "AUC faithfulness": f"{curve.auc(m):.3f}",
             "AUC completeness": f"{curve.auc(m, 'completeness'):.3f}"} for m in curve.methods()]
    print(_table(rows, list(rows[0])))
    atomic_write_text(args.out, json.dumps(curve.to_dict(), indent=1))
    if args.html:
        write_html(curve_figure(curve), args.html)
    return 0


def cmd_plot(args) -> int:
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
    import json
    from pathlib import Path

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
    import json
    from pathlib import Path

    from .compare import PAPER_TABLE5, compare, comparison_figure
    from .fileio import atomic_write_text
    from .models import load_model
    from .plots import write_html

    model = load_model(args.model)
    task = _task(args, model)
    batches = task.batches(model.tokenizer, args.batch_size, n=args.n_examples)
    comp = compare(model, batches, methods=args.methods.split(","), normalized=args.normalized,
                   task_name=task.name, progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.json", json.dumps(comp.to_dict(), indent=1))
    write_html(comparison_figure(comp), out / "comparison.html")
    rows = [{"component": kind, **{f"PCC {m}": f"{comp.pcc[m][kind]:.3f}" for m in comp.methods}}
            for kind in ("resid", "attn", "mlp")]
    print(f"{comp.model} · {comp.task} · {comp.n_pairs} pairs: Pearson correlation with activation patching\n")
    print(_table(rows, list(rows[0])))
    print("\nThe RelP paper's Table 5 (IOI): " + "; ".join(
        f"{name} {kind} AtP {v['atp']:.3f} / RelP {v['relp']:.3f}"
        for name, kinds in PAPER_TABLE5.items() for kind, v in kinds.items()))
    print(f"wrote {out / 'comparison.json'} and {out / 'comparison.html'}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.out, n_examples=args.n_examples)


def cmd_tasks_make(args) -> int:
    from .tasks import make_task, save_task

    examples = make_task(args.name, args.n, seed=args.seed, words=args.words)
    path = save_task(examples, args.out)
    print(f"wrote {len(examples)} {args.name} pairs to {path}")
    return 0


def cmd_organism_train(args) -> int:
    from pathlib import Path

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
    from .organism.card import write_card

    model_dir, dict_dir = _organism_dirs(args)
    figures = write_card(model_dir, dict_dir)
    rows = [{"task": t, "group": g, "acc clean": f"{r['acc_clean']:.1%}", "LD clean": f"{r['ld_clean']:.2f}",
             "acc patch": f"{r['acc_patch']:.1%}", "LD patch": f"{r['ld_patch']:.2f}"}
            for t, groups in figures["tasks"].items() for g, r in groups.items()]
    print(_table(rows, list(rows[0])))
    print(f"card written to {model_dir}/README.md")
    return 0


def _organism_dirs(args):
    from .models import ORGANISM_DIR, REPO_ROOT

    if args.out:
        return f"{args.out}/model", f"{args.out}/dictionaries"
    return str(ORGANISM_DIR), str(REPO_ROOT / "dictionaries" / "organism")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featurecircuits", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the default demo: circuits in the organism, offline")
    demo.add_argument("--out", default="out/demo", help="folder for the circuits, graphs and curves")
    demo.add_argument("--n-examples", type=int, default=48)
    demo.set_defaults(func=cmd_demo)

    def common(p, *, task=True):
        p.add_argument("--model", default="organism", help="'organism', a local directory or a hub id")
        p.add_argument("--dictionaries", default="organism",
                       help="dictionary root ('organism', a folder, a hub repo id), 'neurons' (identity "
                            "baseline) or 'none'")
        if task:
            p.add_argument("--task", required=True, help="a JSONL file or a task name (ioi, sva-rc, ...)")
            p.add_argument("--n-examples", type=int, default=100)
            p.add_argument("--batch-size", type=int, default=32)
            p.add_argument("--seed", type=int, default=0, help="seed for generated tasks")

    def ablation(p):
        p.add_argument("--ablation", choices=["mean", "zero", "resample"], default="mean")
        p.add_argument("--errors", choices=["ablate", "keep", "remove"], default="ablate")
        p.add_argument("--start-layer", type=int, default=0)
        p.add_argument("--no-embed", action="store_true", help="never ablate the embedding")

    from .attribution import METHODS

    disc = sub.add_parser("discover", help="find a circuit and save it as JSON (and HTML)")
    common(disc)
    disc.add_argument("--method", choices=list(METHODS), default="relp")
    disc.add_argument("--node-threshold", type=float, default=0.1)
    disc.add_argument("--edge-threshold", type=float, default=0.01)
    disc.add_argument("--top-k", type=int)
    disc.add_argument("--aggregation", choices=["sum", "none"], default="sum")
    disc.add_argument("--ig-steps", type=int, default=10)
    disc.add_argument("--direction", choices=["noising", "denoising"], default="noising")
    disc.add_argument("--out", required=True, help="circuit JSON file")
    disc.add_argument("--html", help="also write the interactive graph here")
    disc.set_defaults(func=cmd_discover)

    ev = sub.add_parser("evaluate", help="faithfulness and completeness of a saved circuit")
    common(ev)
    ablation(ev)
    ev.add_argument("--circuit", required=True)
    ev.add_argument("--out", help="result JSON file")
    ev.set_defaults(func=cmd_evaluate)

    cur = sub.add_parser("curve", help="faithfulness vs circuit size for several methods")
    common(cur)
    ablation(cur)
    cur.add_argument("--methods", default="relp,ig,atp")
    cur.add_argument("--thresholds", help="comma-separated; default logspace(-4, 0, 15) × the largest score")
    cur.add_argument("--absolute", action="store_true", help="thresholds are absolute scores")
    cur.add_argument("--ig-steps", type=int, default=10)
    cur.add_argument("--out", required=True, help="curve JSON file")
    cur.add_argument("--html", help="also write the plot here")
    cur.set_defaults(func=cmd_curve)

    cmp = sub.add_parser("compare", help="AP vs AtP vs RelP at every layer and position (RelP paper, Table 5)")
    cmp.add_argument("--model", default="organism", help="'organism', 'smollm2', a .gguf file, a folder or hub id")
    cmp.add_argument("--task", default="ioi", help="a JSONL file or a task name")
    cmp.add_argument("--n", dest="n_examples", type=int, default=100, help="number of pairs")
    cmp.add_argument("--batch-size", type=int, default=25)
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--methods", default="atp,relp")
    cmp.add_argument("--normalized", action="store_true",
                     help="metric (LD − LD_patch)/(LD_clean − LD_patch) instead of the logit difference")
    cmp.add_argument("--out", required=True, help="folder for comparison.json and comparison.html")
    cmp.set_defaults(func=cmd_compare)

    plot = sub.add_parser("plot", help="interactive HTML graph of a saved circuit")
    plot.add_argument("--circuit", required=True)
    plot.add_argument("--out", required=True)
    plot.add_argument("--title")
    plot.add_argument("--node-threshold", type=float)
    plot.add_argument("--edge-threshold", type=float)
    plot.add_argument("--top-k", type=int)
    plot.set_defaults(func=cmd_plot)

    exp = sub.add_parser("export", help="one example of a circuit as an attribution graph "
                                        "(circuit-tracer's viewer, Neuronpedia)")
    exp.add_argument("--circuit", required=True)
    exp.add_argument("--example", type=int, default=0, help="index into the task's examples, in file order")
    exp.add_argument("--format", choices=["attribution-graph"], default="attribution-graph")
    exp.add_argument("--out", required=True, help="folder for <slug>.json and graph-metadata.json")
    exp.add_argument("--model", help="default: the circuit's model")
    exp.add_argument("--dictionaries", help="default: the circuit's dictionaries")
    exp.add_argument("--task", help="a JSONL file or a task name (default: the circuit's task)")
    exp.add_argument("--seed", type=int, default=0, help="seed of a generated --task")
    exp.add_argument("--n-examples", type=int, help="examples generated for a --task name (default 100)")
    exp.add_argument("--slug", help="the graph's name (default model-task-method-exN)")
    exp.add_argument("--edge-threshold", type=float, help="keep links with |weight| ≥ this (default: the circuit's)")
    exp.set_defaults(func=cmd_export)

    from .tasks import TASK_NAMES, WORD_LISTS

    tasks = sub.add_parser("tasks", help="task data").add_subparsers(dest="tasks_command", required=True)
    make = tasks.add_parser("make", help="generate clean/patch pairs as JSONL")
    make.add_argument("name", choices=TASK_NAMES)
    make.add_argument("--n", type=int, default=100)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--words", choices=list(WORD_LISTS), default="organism",
                      help="word lists: the organism's (held-out combinations) or single tokens for Pythia")
    make.add_argument("--out", required=True)
    make.set_defaults(func=cmd_tasks_make)

    org = sub.add_parser("organism", help="the bundled model organism").add_subparsers(
        dest="organism_command", required=True)
    train = org.add_parser("train", help="train the model and its SAEs from a seed, then write the card")
    train.add_argument("--out", help="write DIR/model and DIR/dictionaries (default: the shipped locations)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--steps", type=int, help="model training steps (default 3000)")
    train.add_argument("--sae-steps", type=int, help="SAE training steps (default 1200)")
    train.add_argument("--saes-only", action="store_true", help="keep the saved model, retrain the SAEs")
    train.add_argument("--no-card", action="store_true")
    train.set_defaults(func=cmd_organism_train)
    card = org.add_parser("card", help="measure the organism and write its model card")
    card.add_argument("--out", help="the DIR given to `organism train --out` (default: shipped)")
    card.set_defaults(func=cmd_organism_card)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
