"""The circuit figure and the page of several circuits.

A circuit is drawn for reading: one row per submodule in execution order (``embed``, then per layer
``attn_l``, ``mlp_l``, ``resid_l`` — resid_l above attn_l/mlp_l, since they add into it), with positions
kept one column per token position (token strings along the axis), summed over positions the nodes of a
row ordered by |score| (largest left). Features are circles labelled ``f812``, error terms triangles
labelled ``ε``, components squares; colour is the sign of the score and size its magnitude, on a scale
that the circuits of one page can share. The page lets a reader thin the edges with a slider and click a
node to see only its in- and out-edges and a panel with its details.

Every string that came from a tokenizer or a user is HTML-escaped before it reaches the page: plotly
renders hover text, labels and titles as HTML.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from ..circuit import Circuit
from ..nodes import METRIC_NODE, execution_order
from .curve import curve_figure
from .page import Section, write_page
from .page import esc as _esc
from .palette import NEGATIVE as _NEG
from .palette import POSITIVE as _POS
from .palette import SCORE_COLORSCALE as _COLORSCALE

_SYMBOLS = {"feature": "circle", "error": "triangle-up", "component": "square", "metric": "diamond"}
# edge width buckets by |weight| / weight_scale: (upper bound, line width, opacity)
_EDGE_BUCKETS = ((0.1, 0.6, 0.25), (0.3, 1.2, 0.4), (0.6, 2.2, 0.6), (math.inf, 3.5, 0.8))
_DEFAULT_EDGES_SHOWN = 300
_MAX_PER_LINE = 40  # nodes side by side in one row (summed) or one cell (positions kept) before wrapping


# -- layout -------------------------------------------------------------------------------------------

def _sub_of(circuit: Circuit, node: str) -> str:
    return circuit.ref(node).submodule


def submodule_rows(circuit: Circuit) -> list[str]:
    """Submodules in execution order, bottom to top: embed, then per layer (z_l,) attn_l, mlp_l, resid_l.

    Rows of every submodule the circuit was scored on (metadata ``submodules``) are kept even when empty,
    so that circuits of one model line up."""
    return execution_order({_sub_of(circuit, n) for n in circuit.nodes} | set(circuit.metadata.get("submodules") or []))


def _kind(circuit: Circuit, node: str) -> str:
    return "metric" if node == METRIC_NODE else circuit.ref(node).kind


def _position(circuit: Circuit, node: str):
    return circuit.ref(node).position


def _lines(names: list[str], span: dict[str, float], width: float) -> list[list[str]]:
    """Greedy lines of at most ``width`` slots (a node takes ``span[name]`` slots)."""
    lines: list[list[str]] = [[]]
    used = 0.0
    for name in names:
        if lines[-1] and used + span[name] > width:
            lines.append([])
            used = 0.0
        lines[-1].append(name)
        used += span[name]
    return lines


def _spread(names: list[str], span: dict[str, float], width: float, center: float | None, row: float,
            pos: dict) -> None:
    """Place ``names`` (most important first) in lines of ``width`` slots, centred on ``center`` (from
    x = 0 rightwards when None); the first line (the labelled nodes) on the row, the others below it,
    clear of the labels of the row underneath."""
    lines = _lines(names, span, width)
    for i, line in enumerate(lines):
        dy = 0.0 if i == 0 else -0.22 - 0.1 * (i - 1) / max(1, len(lines) - 2)
        total = sum(span[n] for n in line)
        x = 0.0 if center is None else center - total / 2
        for name in line:
            pos[name] = (x + span[name] / 2, row + dy)
            x += span[name]


def _layout(circuit: Circuit, rows: list[str], n_positions: int | None, labelled: set[str]):
    """Node coordinates and the x-axis column centres (positions kept). A labelled node takes more room
    than an unlabelled one, so that labels do not run into each other."""
    row_of = {s: i for i, s in enumerate(rows)}
    by_abs = sorted(circuit.nodes, key=lambda n: -abs(circuit.score(n)))
    pos: dict[str, tuple[float, float]] = {}
    if n_positions is None:  # summed over positions: each row ordered by |score|, largest left
        span = {n: 2.4 if n in labelled else 1.0 for n in by_abs}
        by_row: dict[str, list[str]] = {}
        for n in by_abs:
            by_row.setdefault(_sub_of(circuit, n), []).append(n)
        width = min(_MAX_PER_LINE, max((sum(span[n] for n in v) for v in by_row.values()), default=1.0))
        for sub, names in by_row.items():
            _spread(names, span, width, None, row_of[sub], pos)
        pos[METRIC_NODE] = (width / 2, len(rows))
        return pos, []
    span = {n: 2.2 if n in labelled else 1.0 for n in by_abs}
    cells: dict[tuple[int, str], list[str]] = {}
    for n in by_abs:
        cells.setdefault((_position(circuit, n), _sub_of(circuit, n)), []).append(n)
    widths = [2.0] * n_positions
    for (p, _), names in cells.items():
        widths[p] = max(widths[p], min(_MAX_PER_LINE / 2, sum(span[n] for n in names)))
    centers, x = [], 0.0
    for w in widths:
        centers.append(x + w / 2)
        x += w + 1.0  # a gap between token columns
    for (p, sub), names in cells.items():
        _spread(names, span, widths[p], centers[p], row_of[sub], pos)
    pos[METRIC_NODE] = (centers[-1], len(rows))
    return pos, centers


def _n_positions(circuit: Circuit) -> int | None:
    if circuit.metadata.get("aggregation") != "none":
        return None
    found = [p for n in circuit.nodes if (p := _position(circuit, n)) is not None]
    lengths = circuit.metadata.get("token_lengths") or []
    return max([*(p + 1 for p in found), *lengths, 1])


def _example_tokens(circuit: Circuit, tokens) -> list[list[str]] | None:
    """Token strings per example: ``tokens`` (one example's list, or a list of examples' lists), else the
    circuit metadata's ``example_tokens`` / ``tokens``."""
    if tokens is None:
        tokens = circuit.metadata.get("example_tokens") or circuit.metadata.get("tokens")
    if not tokens:
        return None
    return [list(tokens)] if isinstance(tokens[0], str) else [list(t) for t in tokens]


def _column_labels(n_positions: int, examples: list[list[str]] | None, example: int) -> list[str]:
    """The chosen example's tokens, or ``pos k`` where the examples' tokens differ at k."""
    labels = []
    for k in range(n_positions):
        seen = {ex[k] for ex in examples or [] if k < len(ex)}
        chosen = examples[example] if examples and example < len(examples) else None
        if chosen is not None and k < len(chosen) and len(seen) == 1:
            labels.append(f"{_esc(chosen[k])}<br><span style='font-size:9px'>{k}</span>")
        else:
            labels.append(f"pos {k}" + (f"<br><span style='font-size:9px'>e.g. {_esc(chosen[k])}</span>"
                                        if chosen is not None and k < len(chosen) else ""))
    return labels


def _label(circuit: Circuit, node: str, summed: bool) -> str:
    kind = _kind(circuit, node)
    if kind == "error":
        return "ε"
    if kind == "component":
        return _esc(_sub_of(circuit, node))
    text = f"f{circuit.ref(node).feature}"
    contexts = circuit.graph.nodes[node].get("top_contexts") or []
    if summed and contexts:  # the token the feature fires most on, as in "f812 ‹keys›"
        first = str(contexts[0])
        if "[" in first and "]" in first[first.rfind("["):]:
            tok = first[first.rfind("[") + 1:first.rfind("]")]
            text += f"<br>‹{_esc(tok)}›"
    return text


def _hover(circuit: Circuit, node: str) -> str:
    a = circuit.graph.nodes[node]
    g = circuit.graph
    if node == METRIC_NODE:
        lines = [f"<b>metric: {_esc(circuit.metadata.get('metric', 'logit difference'))}</b>",
                 f"m(source) − m(base) = {a.get('score', 0.0):+.4f}"]
    else:
        lines = [f"<b>{_esc(node)}</b>", f"{_kind(circuit, node)} · score {a.get('score', 0.0):+.4f}"]
        if a.get("mean_activation") is not None:
            lines.append(f"mean activation {a['mean_activation']:.3f}")
        for ctx in a.get("top_contexts") or []:
            lines.append("· " + _esc(ctx))
    lines.append(f"{g.in_degree(node)} in-edges, {g.out_degree(node)} out-edges")
    return "<br>".join(lines)


def _bucket(w: float, scale: float) -> int:
    r = abs(w) / scale
    return next(i for i, (hi, _, _) in enumerate(_EDGE_BUCKETS) if r < hi)


def shared_scales(circuits: Sequence[Circuit]) -> dict[str, float]:
    """``score_scale`` and ``weight_scale`` covering every circuit, for drawing them on one scale."""
    scores = [abs(c.score(n)) for c in circuits for n in c.nodes]
    weights = [abs(w) for c in circuits for _, _, w in c.graph.edges(data="weight")]
    return {"score_scale": max(scores, default=1.0) or 1.0, "weight_scale": max(weights, default=1.0) or 1.0}


def describe(circuit: Circuit) -> str:
    """One line for the page: model, task, method, thresholds and sizes (escaped)."""
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
    if m.get("n_examples") is not None:
        parts.append(f"{m['n_examples']} examples")
    parts.append(f"{len(circuit)} nodes, {circuit.n_edges} edges")
    return _esc(" · ".join(str(p) for p in parts))


def circuit_figure(circuit: Circuit, *, title: str | None = None, score_scale: float | None = None,
                   weight_scale: float | None = None, tokens=None, example: int = 0,
                   label_top: int | None = None, edges_shown: int | None = None) -> go.Figure:
    """The circuit as a plotly figure (see the module docstring for how it reads).

    ``score_scale``/``weight_scale``: the |score| and |weight| drawn at full colour/size (default this
    circuit's largest; pass :func:`shared_scales` of several circuits to compare them by colour).
    ``tokens``: token strings of one example or of several (positions kept; default the metadata's
    ``example_tokens``), ``example`` the one whose tokens label the columns. ``label_top``: how many of
    the most important nodes carry a visible label (default all up to 40, else a quarter, 40 to 80).
    ``edges_shown``: how many of the strongest edges are drawn at first (the page has a slider)."""
    rows = submodule_rows(circuit)
    n_pos = _n_positions(circuit)
    score_scale = score_scale or max((abs(circuit.score(n)) for n in circuit.nodes), default=1.0) or 1.0
    edges = sorted(circuit.graph.edges(data="weight"), key=lambda e: -abs(e[2]))
    weight_scale = weight_scale or (abs(edges[0][2]) if edges else 1.0) or 1.0
    n = len(circuit)
    if label_top is None:
        label_top = n if n <= 40 else min(80, max(40, n // 4))
    labelled = set(circuit.top(label_top))
    pos, centers = _layout(circuit, rows, n_pos, labelled)
    shown = min(len(edges), _DEFAULT_EDGES_SHOWN if edges_shown is None else edges_shown)

    names = [*circuit.nodes, METRIC_NODE]
    traces = _edge_traces(edges[:shown], pos, weight_scale)
    kinds = [_kind(circuit, x) for x in names]
    traces.append(_node_trace(circuit, names, kinds, pos, labelled, score_scale, summed=n_pos is None))
    traces += _legend_traces("component" in kinds)
    fig = go.Figure(traces)
    fig.update_layout(**_circuit_layout(circuit, rows, n_pos, centers, tokens, example, title))
    index = {name: i for i, name in enumerate(names)}
    fig.update_layout(meta={"featurecircuits": {
        "node_trace": 2 * len(_EDGE_BUCKETS), "edge_traces": list(range(2 * len(_EDGE_BUCKETS))), "ids": names,
        "x": [pos[x][0] for x in names], "y": [pos[x][1] for x in names],
        "edges": [[index[u], index[v], float(w)] for u, v, w in edges], "weight_scale": weight_scale,
        "buckets": [b[0] if math.isfinite(b[0]) else 1e300 for b in _EDGE_BUCKETS], "shown": shown}})
    return fig


def _edge_traces(edges, pos, weight_scale: float) -> list[go.Scatter]:
    """One trace per (sign, width bucket), refilled by the page's script when thinned or selected."""
    nb = len(_EDGE_BUCKETS)
    xs: list[list] = [[] for _ in range(2 * nb)]
    ys: list[list] = [[] for _ in range(2 * nb)]
    for u, v, w in edges:
        b = (0 if w >= 0 else nb) + _bucket(w, weight_scale)
        xs[b] += [pos[u][0], pos[v][0], None]
        ys[b] += [pos[u][1], pos[v][1], None]
    traces = []
    for b in range(2 * nb):
        _, width, opacity = _EDGE_BUCKETS[b % nb]
        traces.append(go.Scatter(x=xs[b], y=ys[b], mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"width": width, "color": _POS if b < nb else _NEG}, opacity=opacity))
    return traces


def _node_trace(circuit, names, kinds, pos, labelled, score_scale: float, *, summed: bool) -> go.Scatter:
    """Every node: symbol by kind, colour by sign, size by |score|, labels on the ``labelled`` ones."""
    scores = [circuit.score(x) if x != METRIC_NODE else 0.0 for x in names]
    return go.Scatter(
        x=[pos[x][0] for x in names], y=[pos[x][1] for x in names], mode="markers+text",
        text=[_label(circuit, x, summed) if x in labelled else "" for x in names],
        textposition="top center", textfont={"size": 10, "color": "#222"},
        marker={"size": [26 if k == "metric" else 7 + 23 * math.sqrt(min(1.0, abs(s) / score_scale))
                         for k, s in zip(kinds, scores, strict=True)],
                "color": [max(-score_scale, min(score_scale, s)) for s in scores],
                "colorscale": _COLORSCALE, "cmin": -score_scale, "cmax": score_scale,
                "symbol": [_SYMBOLS[k] for k in kinds], "line": {"width": 1, "color": "#333"},
                "colorbar": {"title": {"text": "score<br>red +<br>blue −"}, "thickness": 14, "len": 0.6,
                             "x": 1.01, "y": 0.4}},
        hovertext=[_hover(circuit, x) for x in names], hoverinfo="text", customdata=names,
        name="nodes", showlegend=False)


def _legend_traces(with_components: bool) -> list[go.Scatter]:
    """Legend entries for the node shapes and edge colours (no data)."""
    traces = []
    for label, symbol in (("feature (label f<i>index</i>; size ∝ |score|)", "circle"),
                          ("error term ε (x − x̂)", "triangle-up"), ("component", "square"),
                          ("metric", "diamond")):
        if symbol == "square" and not with_components:
            continue
        traces.append(go.Scatter(x=[None], y=[None], mode="markers", name=label, hoverinfo="skip",
                                 marker={"symbol": symbol, "size": 11, "color": "#bbb",
                                         "line": {"width": 1, "color": "#333"}}))
    for label, color in (("edge, positive weight", _POS), ("edge, negative weight", _NEG)):
        traces.append(go.Scatter(x=[None], y=[None], mode="lines", name=label, line={"color": color, "width": 2},
                                 hoverinfo="skip"))
    return traces


def _circuit_layout(circuit, rows, n_pos, centers, tokens, example, title) -> dict:
    """Title with the run's settings, one row per submodule (metric on top), token or score-ordered columns."""
    meta = circuit.metadata
    heading = title or (f"{meta.get('method', '?')} circuit · {meta.get('model', '')} · {len(circuit)} nodes, "
                        f"{circuit.n_edges} edges")
    n_rows = len(rows) + 1
    xaxis = {"showgrid": False, "zeroline": False}
    if n_pos is None:
        xaxis.update(showticklabels=False, title={"text": "nodes of a row ordered by |score|, largest left"})
    else:
        examples = _example_tokens(circuit, tokens)
        xaxis.update(tickvals=centers, range=[-1, centers[-1] + 3], tickangle=0,
                     ticktext=_column_labels(n_pos, examples, example),
                     title={"text": "token position" + ("" if examples else " (no example tokens recorded)")},
                     showgrid=False)
    return dict(
        title={"text": _esc(heading) + f"<br><span style='font-size:12px;color:#555'>{describe(circuit)}</span>",
               "y": 1.0, "yref": "container", "yanchor": "top", "pad": {"t": 12}},
        template="plotly_white", height=150 + 66 * n_rows, hovermode="closest",
        margin={"l": 70, "r": 40, "t": 125, "b": 60}, xaxis=xaxis,
        yaxis={"tickvals": list(range(n_rows)), "ticktext": [_esc(r) for r in rows] + ["<b>metric</b>"],
               "range": [-0.7, n_rows - 0.3], "showgrid": True, "gridcolor": "#f0f0f0", "zeroline": False,
               "fixedrange": False},
        legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom", "font": {"size": 11}})


def circuits_page(circuits: dict[str, Circuit], path: str | Path, *, curves: dict | None = None,
                  title: str = "featurecircuits", shared_scale: bool = True, **figure_options) -> Path:
    """Several circuits (and faithfulness curves) on one page, one tab each; by default on one colour,
    size and edge-width scale so that the circuits of one run compare by eye."""
    scales = shared_scales(list(circuits.values())) if shared_scale else {}
    sections = [Section(name, circuit_figure(c, **scales, **figure_options),
                        note=("shared colour/size scale: |score| " f"{scales['score_scale']:.3g} = full, "
                              f"|weight| {scales['weight_scale']:.3g} = widest") if scales else "")
                for name, c in circuits.items()]
    for name, curve in (curves or {}).items():
        sections.append(Section(name, curve if isinstance(curve, go.Figure) else curve_figure(curve, title=name)))
    return write_page(sections, path, title=title)
