"""Measure the organism on held-out task pairs and write its model card (never by hand)."""

from __future__ import annotations

import random
from collections import defaultdict

import torch

from ..attribution import attribute
from ..data import logit_diff
from ..models import Model
from ..splice import Splice, run
from ..tasks import TASK_NAMES, Task, make_task, n_distinct
from . import corpus


def task_accuracy(model: Model, task: Task, *, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Per template/variant: accuracy and mean logit difference on clean and on patch prompts."""
    tok = model.tokenizer
    rows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for ex in task.examples:
        rows[ex.get("template") or ex.get("variant") or "all"].append(ex)
    out = {}
    for group, exs in rows.items():
        sub = Task(task.name, exs)
        clean_ld, patch_ld = [], []
        for b in sub.batches(tok, batch_size):
            with torch.no_grad():
                clean_ld.append(logit_diff(model.hf(input_ids=b.clean).logits, b))
                patch_ld.append(-logit_diff(model.hf(input_ids=b.patch).logits, b))  # patch answer − clean answer
        c, p = torch.cat(clean_ld), torch.cat(patch_ld)
        out[group] = {"n": len(exs), "acc_clean": float((c > 0).float().mean()), "ld_clean": float(c.mean()),
                      "acc_patch": float((p > 0).float().mean()), "ld_patch": float(p.mean())}
    return out


def dictionary_quality(model: Model, dictionaries: dict, *, n_seqs: int = 128, seq_len: int = 32,
                       seed: int = 12345) -> dict[str, dict[str, float]]:
    """Fraction of variance explained and mean L0 of each dictionary on fresh corpus text."""
    rng = random.Random(seed)
    ids = torch.tensor([corpus.document(rng, seq_len, model.tokenizer) for _ in range(n_seqs)])
    store = {}
    splice = Splice(model)
    with torch.no_grad():
        run(model, ids, splice.capture_edit(store), splice.submodules)
    out = {}
    for name, ae in dictionaries.items():
        x = store[name]["act"].reshape(-1, model.d_model)
        with torch.no_grad():
            f = ae.encode(x)
            x_hat = ae.decode(f)
        fve = 1 - float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        alive = float((f > 0).any(0).float().mean())
        out[name] = {"fve": fve, "l0": float((f > 0).float().sum(-1).mean()), "alive": alive}
    return out


def reconstruction_retention(model: Model, dictionaries: dict, tasks: dict[str, Task]) -> dict[str, dict[str, float]]:
    """Per dictionary and task: mean logit difference with that one dictionary spliced *without* its error
    term, as a fraction of the model's own."""
    out: dict[str, dict[str, float]] = {}
    for tname, task in tasks.items():
        batches = task.batches(model.tokenizer, 64)
        with torch.no_grad():
            base = torch.cat([logit_diff(model.hf(input_ids=b.clean).logits, b) for b in batches]).mean()
        for name, ae in dictionaries.items():
            sub = model.submodule(name)
            vals = []
            for b in batches:
                with torch.no_grad():
                    logits = run(model, b.clean, lambda s, x, ae=ae: ae.decode(ae.encode(x)), [sub])
                vals.append(logit_diff(logits, b))
            out.setdefault(name, {})[tname] = float(torch.cat(vals).mean() / base)
    return out


def ap_heatmap(model: Model, task: Task, *, n: int = 32) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Mean component-level AP per (layer, position) for the first token length in ``task``:
    returns the clean tokens of one example and {kind: (layers, positions)} tensors."""
    batch = task.batches(model.tokenizer, n, n=n)[0]
    res = attribute(model, batch, method="ap")
    grids = {}
    for kind in ("resid", "attn", "mlp"):
        subs = [s.name for s in model.submodules if s.kind == kind]
        grids[kind] = torch.stack([res.scores[s].mean(0) for s in subs])
    grids["embed"] = res.scores["embed"].mean(0, keepdim=True)
    tokens = model.tokenizer.convert_ids_to_tokens(batch.clean[0].tolist())
    return tokens, grids


def small_circuits(model: Model, dictionaries: dict, *, n_nodes: int = 200, n: int = 48,
                   methods: tuple[str, ...] = ("relp", "ig", "atp")) -> dict[str, dict[str, dict[str, float]]]:
    """Per agreement variant and method: faithfulness and completeness (full mean ablation) of the top
    ``n_nodes`` circuit, found on ``n`` held-out pairs and evaluated on ``n`` others."""
    from ..circuit import discover
    from ..evaluation import evaluate

    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in TASK_NAMES:
        if not name.startswith("sva"):
            continue
        found_on, checked_on = (Task(name, make_task(name, min(n, n_distinct(name)), seed=seed)) for seed in (0, 1))
        for method in methods:
            circuit = discover(model, dictionaries, found_on, method=method, top_k=n_nodes, n_examples=n,
                               edges=False)
            r = evaluate(model, dictionaries, circuit, checked_on, n_examples=n)
            out.setdefault(name, {})[method] = {"nodes": len(circuit), "faithfulness": r.faithfulness,
                                                "completeness": r.completeness}
    return out


def heldout_tasks(n: int = 200, seed: int = 1) -> dict[str, Task]:
    """``n`` distinct pairs per task, or all there are (sva-simple has 40, sva-pp 192)."""
    return {name: Task(name, make_task(name, min(n, n_distinct(name)), seed=seed)) for name in TASK_NAMES}


def _grid_table(tokens: list[str], grid: torch.Tensor, row_label: str) -> list[str]:
    head = "| " + row_label + " | " + " | ".join(f"`{t}`" for t in tokens) + " |"
    lines = [head, "|" + "---|" * (len(tokens) + 1)]
    for l, row in enumerate(grid.tolist()):
        lines.append(f"| {l} | " + " | ".join(f"{v:+.2f}" if abs(v) >= 0.005 else "·" for v in row) + " |")
    return lines


def _targets(info: dict) -> list[str]:
    """Each target of the organism, met or missed, from the measured figures."""
    out = []
    ioi = info["tasks"]["ioi"].values()
    ok = all(r["acc_clean"] >= 0.95 and r["acc_patch"] >= 0.95 and r["ld_clean"] >= 3 and r["ld_patch"] >= 3
             for r in ioi)
    out.append(f"- IOI accuracy ≥ 95 % and logit difference ≥ 3 on every template, clean and patch: "
               f"{'met' if ok else 'missed'}")
    sva = [r for t, g in info["tasks"].items() if t.startswith("sva") for r in g.values()]
    ok = all(r["acc_clean"] >= 0.95 and r["acc_patch"] >= 0.95 for r in sva)
    out.append(f"- agreement accuracy ≥ 95 % on all four variants: {'met' if ok else 'missed'}")
    low = [n for n, q in info["saes"].items() if q["fve"] < 0.9]
    out.append(f"- every SAE explains ≥ 90 % of variance: {'met' if not low else 'missed for ' + ', '.join(low)}")
    for task in ("ioi", "sva"):
        bad = [f"{n} ({min(v for k, v in r.items() if k.startswith(task)):.2f})"
               for n, r in info["retention"].items() if min(v for k, v in r.items() if k.startswith(task)) < 0.8]
        label = "IOI" if task == "ioi" else "agreement"
        out.append(f"- {label} logit difference kept ≥ 80 % with each single SAE spliced without its error term: "
                   + ("met" if not bad else "missed for " + ", ".join(bad)))
    rc = info["circuits"]["sva-rc"]["relp"]
    out.append(f"- a {rc['nodes']}-node RelP circuit keeps ≥ 80 % of the agreement (across a relative clause) logit "
               f"difference under mean ablation: {'met' if rc['faithfulness'] >= 0.8 else 'missed'} "
               f"({rc['faithfulness']:.2f})")
    return out


def card_markdown(info: dict) -> str:
    """The model card from measured figures (``info`` is what ``measure`` returned)."""
    cfg = info["config"]
    lines = [
        "# The organism",
        "",
        "A small GPT-NeoX (Pythia architecture: parallel residual, rotary embeddings, LayerNorm, GELU) trained",
        "from scratch on a synthetic corpus of IOI stories, subject-verb agreement sentences and filler, with",
        "sparse autoencoders for the embedding and every layer's attention, MLP and residual output.",
        "**This file is generated by `featurecircuits organism card`; every figure below is measured.**",
        "",
        "## Model",
        "",
        f"- {cfg['n_layers']} layers, hidden {cfg['d_model']}, {cfg['n_heads']} heads, MLP {cfg['d_mlp']}, "
        f"vocabulary {info['vocab_size']} words, {info['n_params']:,} parameters",
        f"- trained {cfg['steps']} steps × {cfg['batch_size']} sequences × {cfg['seq_len']} tokens, AdamW "
        f"lr {cfg['lr']}, seed {cfg['seed']}; final training loss {info['final_loss']:.3f}",
        f"- training time on this machine: model {info['seconds_model']:.0f} s, SAEs {info['seconds_saes']:.0f} s",
        "- load it with `featurecircuits.load_model(\"organism\")`, or with plain transformers:",
        "  `AutoModelForCausalLM.from_pretrained(\"models/organism\")`",
        "",
        "## Tasks (held-out pairs: name pairs and noun combinations never seen together in training)",
        "",
        "| task | group | n | accuracy clean | logit diff clean | accuracy patch | logit diff patch |",
        "|---|---|---|---|---|---|---|",
    ]
    for tname, groups in info["tasks"].items():
        for g, r in groups.items():
            lines.append(f"| {tname} | {g} | {r['n']} | {r['acc_clean']:.1%} | {r['ld_clean']:.2f} | "
                         f"{r['acc_patch']:.1%} | {r['ld_patch']:.2f} |")
    return "\n".join(lines + _sae_and_circuit_sections(info)) + "\n"


def _sae_and_circuit_sections(info: dict) -> list[str]:
    """The card's dictionaries, small circuits, targets and activation-patching sections."""
    cfg = info["config"]
    lines = [
        "",
        "## Sparse autoencoders",
        "",
        f"dictionary_learning `AutoEncoder`, width {cfg['sae_width']}, {cfg['sae_steps']} steps × "
        f"{cfg['sae_batch_seqs'] * cfg['seq_len']} tokens, per-token relative loss with the L1 coefficient "
        "below; unit-norm decoder. Fraction of variance explained and L0 on fresh corpus text; *retention* = "
        "task logit difference with that dictionary spliced in **without** its error term, as a fraction of "
        "the model's.",
        "",
        "| submodule | L1 | FVE | mean L0 | alive features | retention IOI | retention agreement (min of 4) |",
        "|---|---|---|---|---|---|---|",
    ]
    l1 = dict(map(tuple, cfg.get("sae_l1_per_submodule", ())))
    for name, q in info["saes"].items():
        ret = info["retention"][name]
        sva = min(v for k, v in ret.items() if k.startswith("sva"))
        lines.append(f"| {name} | {l1.get(name, cfg['sae_l1'])} | {q['fve']:.3f} | {q['l0']:.1f} | {q['alive']:.0%} | "
                     f"{ret['ioi']:.2f} | {sva:.2f} |")
    methods = list(next(iter(info["circuits"].values())))
    lines += ["", "## Small circuits", "",
              "Faithfulness (completeness) of the top-scoring circuit of a fixed size, found on 48 held-out pairs and "
              "evaluated on 48 others, with every node outside it mean-ablated (embedding and every layer, error "
              "terms like features).", "",
              "| agreement variant | nodes | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for name, by_method in info["circuits"].items():
        cells = [f"{r['faithfulness']:.2f} ({r['completeness']:.2f})" for r in by_method.values()]
        lines.append(f"| {name} | {next(iter(by_method.values()))['nodes']} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets", ""] + _targets(info)
    for tname, (tokens, grids) in info["ap"].items():
        lines += ["", f"## Activation patching: {tname}", "",
                  "Mean effect on the logit difference of patching one component's output at one position "
                  "from the patch prompt into the clean prompt (clean logit difference "
                  f"{info['ap_base'][tname]:.2f}; `·` = |effect| < 0.005).", "", "Residual stream:", ""]
        lines += _grid_table(tokens, grids["resid"], "layer")
        lines += ["", "Attention outputs:", ""] + _grid_table(tokens, grids["attn"], "layer")
        lines += ["", "MLP outputs:", ""] + _grid_table(tokens, grids["mlp"], "layer")
    return lines


def measure(model: Model, dictionaries: dict, info: dict, *, n: int = 200) -> dict:
    """Every figure of the card: task accuracy, SAE quality and retention, AP heatmaps."""
    tasks = heldout_tasks(n)
    out = dict(info)
    out["vocab_size"] = len(model.tokenizer)
    out["n_params"] = sum(p.numel() for p in model.hf.parameters())
    out["final_loss"] = info["losses_every_50_steps"][-1]
    out["tasks"] = {name: task_accuracy(model, t) for name, t in tasks.items()}
    out["saes"] = dictionary_quality(model, dictionaries)
    out["retention"] = reconstruction_retention(model, dictionaries, tasks)
    out["circuits"] = small_circuits(model, dictionaries)
    out["ap"], out["ap_base"] = {}, {}
    for name in ("ioi", "sva-rc"):
        task = Task(name, [e for e in tasks[name].examples if e.get("template", "then") == "then"])
        tokens, grids = ap_heatmap(model, task)
        out["ap"][name] = (tokens, grids)
        b = task.batches(model.tokenizer, 32, n=32)[0]
        with torch.no_grad():
            out["ap_base"][name] = float(logit_diff(model.hf(input_ids=b.clean).logits, b).mean())
    return out


def write_card(model_dir, dictionaries_dir, *, n: int = 200) -> dict:
    """Measure the saved organism and write ``<model_dir>/README.md`` and ``card.json``."""
    import json
    from pathlib import Path

    from ..dictionaries import load_dictionaries
    from ..fileio import atomic_write_text
    from ..models import load_model

    model_dir = Path(model_dir)
    model = load_model(str(model_dir))
    dictionaries = load_dictionaries(dictionaries_dir, model)
    info = json.loads((model_dir / "training.json").read_text())
    figures = measure(model, dictionaries, info, n=n)
    atomic_write_text(model_dir / "README.md", card_markdown(figures))
    serialisable = dict(figures)
    serialisable["ap"] = {k: {"tokens": t, **{kind: g.tolist() for kind, g in grids.items()}}
                          for k, (t, grids) in figures["ap"].items()}
    atomic_write_text(model_dir / "card.json", json.dumps(serialisable, indent=1))
    return figures
