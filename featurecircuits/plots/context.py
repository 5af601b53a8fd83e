"""The words around a circuit figure: what was run, what the metric is (named by its tokens), one example
pair, how much of the circuit is error terms, how faithful it is and on which pairs, and the one sign
convention every page states. Plain text here; escaped where it is written into a page."""

from __future__ import annotations

from ..circuit import Circuit
from ..nodes import METRIC_NODE


def metric_name(circuit: Circuit) -> str:
    """``logit(" was") − logit(" were")`` where the circuit records an example pair, else the metric's name."""
    ex = circuit.metadata.get("example") or {}
    if ex.get("clean_answer") and ex.get("patch_answer"):
        return f"logit({ex['clean_answer']!r}) − logit({ex['patch_answer']!r})"
    return str(circuit.metadata.get("metric") or "metric")


def sign_convention(circuit: Circuit) -> str:
    ex = circuit.metadata.get("example") or {}
    clean = repr(ex["clean_answer"]) if ex.get("clean_answer") else "the clean answer"
    patch = repr(ex["patch_answer"]) if ex.get("patch_answer") else "the patch answer"
    return (f"Sign: red (+) pushes the metric toward {clean}, blue (−) toward {patch}, for nodes and edges alike "
            f"(whatever the method; a {circuit.metadata.get('direction', 'noising')} score is multiplied by "
            f"{circuit.sign:+d}).")


def describe(circuit: Circuit) -> str:
    """One line: model, task, method, thresholds, positions and sizes."""
    m = circuit.metadata
    task = m.get("task")
    if isinstance(task, dict):
        task = task.get("name") or task.get("file") or task.get("path")
    parts = [f"model {m.get('model', '?')}"] + ([f"task {task}"] if task else []) + [f"method {m.get('method', '?')}"]
    if m.get("direction"):
        parts.append(m["direction"])
    for key, name in (("node_threshold", "node threshold"), ("edge_threshold", "edge threshold"),
                      ("top_k", "top-k")):
        if m.get(key) is not None:
            parts.append(f"{name} {m[key]}")
    parts.append("positions kept" if m.get("aggregation") == "none" else "summed over positions")
    found = m.get("found_on") or {}
    if m.get("n_examples") is not None:
        parts.append(f"found on {m['n_examples']} {found.get('split', '')} pairs".replace("  ", " "))
    parts.append(f"{len(circuit)} nodes, {circuit.n_edges} edges")
    return " · ".join(str(p) for p in parts)


def example_line(circuit: Circuit) -> str | None:
    ex = circuit.metadata.get("example")
    if not ex:
        return None
    return (f"Example pair: clean {ex['clean_prefix']!r} → {ex['clean_answer']!r}; patch {ex['patch_prefix']!r} → "
            f"{ex['patch_answer']!r}. Metric: {metric_name(circuit)} at the last position.")


def error_share(circuit: Circuit) -> float:
    """The share of the circuit's total |score| on error nodes."""
    total = sum(abs(circuit.score(n)) for n in circuit.nodes)
    errors = sum(abs(circuit.score(n)) for n in circuit.nodes if circuit.ref(n).kind == "error")
    return errors / total if total > 0 else 0.0


def evaluation_line(evaluation) -> str | None:
    """Faithfulness and completeness with the pairs they were measured on (a Faithfulness or its dict)."""
    if evaluation is None:
        return None
    e = evaluation if isinstance(evaluation, dict) else vars(evaluation)
    pairs = f"{e.get('n_examples') or '?'} {e.get('split') or 'given'} pairs"
    if e.get("in_sample"):
        pairs += f", in-sample: {e['in_sample']:.0%} of them found the circuit"
    elif e.get("split") == "evaluation":
        pairs += ", held out from the pairs that found it"
    return (f"Faithfulness {e['faithfulness']:.3f}, completeness {e['completeness']:.3f} (lower is better) under "
            f"{(e.get('config') or {}).get('ablation', 'mean')} ablation, on {pairs}.")


def _num(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def verification_line(circuit: Circuit) -> str | None:
    v = circuit.metadata.get("verification")
    if not v:
        return None
    return (f"Checked against activation patching on {v.get('n')} nodes ({v.get('k')} top, inside and outside the "
            f"circuit): Pearson {_num(v.get('pearson'), '.3f')}, Spearman {_num(v.get('spearman'), '.3f')}, signs "
            f"agree {_num(v.get('sign_agreement'), '.0%')}, top-{v.get('k')} overlap "
            f"{_num(v.get('top_k_overlap'), '.0%')}.")


def notes(circuit: Circuit, evaluation=None) -> list[str]:
    """The lines shown above a circuit's figure."""
    lines = [describe(circuit), example_line(circuit), evaluation_line(evaluation), verification_line(circuit),
             f"Error terms hold {error_share(circuit):.0%} of the circuit's total |score| (triangles ε).",
             sign_convention(circuit)]
    return [line for line in lines if line]


def column_labels(circuit: Circuit, columns: int) -> list[str]:
    """Column heads (plain text; ``\\n`` between lines): the clean token (``/ patch token`` where the pair
    differs), the role where the task has one, and the position."""
    labels = []
    positions = circuit.metadata.get("positions") or []
    for k in range(columns):
        p = positions[k] if k < len(positions) else None
        if p is None:
            labels.append(f"pos {k}")
            continue
        token = f"e.g. {p['clean']!r}" if p.get("varies") else repr(p["clean"])
        if p.get("patch") is not None:
            token += f" / {p['patch']!r}"
        labels.append("\n".join(x for x in (p.get("role"), token, str(k)) if x))
    return labels


def metric_hover(circuit: Circuit) -> str:
    m, nan = circuit.metadata, float("nan")
    clean, patch = (m.get("metric_base", nan), m.get("metric_source", nan))[::-circuit.sign]
    gap = circuit.sign * circuit.graph.nodes[METRIC_NODE].get("score", 0.0)
    return (f"metric: {metric_name(circuit)}\non the clean prompts {clean:+.3f}, on the patch prompts {patch:+.3f} "
            f"(mean); clean − patch {gap:+.3f}")
