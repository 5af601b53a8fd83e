"""Interactive, self-contained HTML pictures (plotly.js embedded, works offline).

Every string that came from a tokenizer or a user is HTML-escaped before it reaches the page: plotly
renders hover text and titles as HTML.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import plotly.graph_objects as go

from .circuit import METRIC_NODE, Circuit, parse_node_id
from .fileio import atomic_write_text

KIND_COLUMNS = {"embed": 1, "attn": 0, "mlp": 2, "resid": 1}  # within a layer row: attn | resid | mlp
_POS, _NEG = "#c0392b", "#2e6fba"


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _layout_positions(circuit: Circuit) -> dict[str, tuple[float, float]]:
    """Rows are layers (embedding at the bottom, the metric on top); columns are submodule kinds, or
    token positions when the circuit keeps them; nodes sharing a cell are spread horizontally."""
    cells: dict[tuple[float, float], list[str]] = {}
    positional = circuit.metadata.get("aggregation") == "none"
    n_layers = circuit.metadata.get("n_layers", 0)
    for n in circuit.nodes:
        a = circuit.graph.nodes[n]
        sub = a.get("submodule") or parse_node_id(n)[0]
        kind = sub.split("_")[0]
        layer = a.get("layer", -1) if a.get("layer") is not None else -1
        row = layer + 1 + (0.33 if kind == "attn" else 0.66 if kind == "mlp" else 0.0) if kind != "resid" else layer + 1
        col = (a.get("position") or 0) * 3 + KIND_COLUMNS[kind] if positional else KIND_COLUMNS[kind]
        cells.setdefault((col, row), []).append(n)
    pos = {}
    for (col, row), names in cells.items():
        names.sort(key=lambda x: -abs(circuit.score(x)))
        width = 0.8
        for i, name in enumerate(names):
            offset = (i - (len(names) - 1) / 2) * (width / max(1, len(names)))
            pos[name] = (col + offset, row)
    pos[METRIC_NODE] = ((max((p[0] for p in pos.values()), default=0) + min((p[0] for p in pos.values()),
                                                                              default=0)) / 2, n_layers + 1)
    return pos


def circuit_figure(circuit: Circuit, *, title: str | None = None) -> go.Figure:
    pos = _layout_positions(circuit)
    max_score = max((abs(circuit.score(n)) for n in circuit.nodes), default=1.0) or 1.0
    max_w = max((abs(w) for _, _, w in circuit.graph.edges(data="weight")), default=1.0) or 1.0
    traces = []
    # edges, bucketed by width and sign so that a large circuit stays a handful of traces
    buckets: dict[tuple[int, bool], tuple[list, list]] = {}
    for u, v, w in circuit.graph.edges(data="weight"):
        key = (min(4, int(5 * abs(w) / max_w)), w >= 0)
        xs, ys = buckets.setdefault(key, ([], []))
        xs += [pos[u][0], pos[v][0], None]
        ys += [pos[u][1], pos[v][1], None]
    for (width, positive), (xs, ys) in sorted(buckets.items()):
        traces.append(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"width": 0.5 + 1.5 * width, "color": _POS if positive else _NEG},
                                 opacity=0.25 + 0.15 * width))
    names = list(circuit.graph.nodes)
    hover, sizes, colors = [], [], []
    for n in names:
        a = circuit.graph.nodes[n]
        s = a.get("score", 0.0)
        lines = [f"<b>{_esc(n)}</b>", f"score {s:+.4f}", f"kind {_esc(a.get('kind'))}"]
        if a.get("mean_activation") is not None:
            lines.append(f"mean activation {a['mean_activation']:.3f}")
        if a.get("top_contexts"):
            lines.append("most active on: " + " | ".join(_esc(t) for t in a["top_contexts"]))
        hover.append("<br>".join(lines))
        sizes.append(8 + 24 * math.sqrt(min(1.0, abs(s) / max_score)) if n != METRIC_NODE else 26)
        colors.append(max(-max_score, min(max_score, s)) if n != METRIC_NODE else 0.0)  # metric: neutral
    traces.append(go.Scatter(
        x=[pos[n][0] for n in names], y=[pos[n][1] for n in names], mode="markers",
        marker={"size": sizes, "color": colors, "colorscale": [[0, _NEG], [0.5, "#f4f4f4"], [1, _POS]],
                "cmin": -max_score, "cmax": max_score, "line": {"width": 1, "color": "#333"},
                "colorbar": {"title": "score"}, "symbol": ["diamond" if n == METRIC_NODE else "circle"
                                                           for n in names]},
        hovertext=hover, hoverinfo="text", customdata=names, name="nodes", showlegend=False))
    meta = circuit.metadata
    heading = title or (f"{meta.get('method', '?')} circuit · {meta.get('model', '')} · {len(circuit)} nodes, "
                        f"{circuit.n_edges} edges")
    n_layers = meta.get("n_layers", 0)
    fig = go.Figure(traces)
    fig.update_layout(
        title=_esc(heading), template="plotly_white", height=220 + 90 * (n_layers + 2),
        xaxis={"visible": False}, hovermode="closest",
        yaxis={"tickvals": list(range(n_layers + 2)),
               "ticktext": ["embed"] + [f"layer {i}" for i in range(n_layers)] + ["metric"]},
    )
    return fig


def write_html(fig: go.Figure, path: str | Path) -> Path:
    """Self-contained HTML (plotly.js embedded), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path


def curve_figure(curve, *, title: str = "Faithfulness vs circuit size") -> go.Figure:
    """Faithfulness (solid) and completeness (dotted) against the number of nodes, one colour per method;
    the random-circuit baseline dashed."""
    palette = ["#c0392b", "#2e6fba", "#27ae60", "#8e44ad", "#e67e22"]
    fig = go.Figure()
    for i, method in enumerate(curve.methods()):
        pts = [p for p in curve.series(method) if p.n_nodes > 0]
        color = palette[i % len(palette)]
        x = [p.n_nodes for p in pts]
        fig.add_trace(go.Scatter(x=x, y=[p.faithfulness for p in pts], mode="lines+markers",
                                 name=f"{_esc(method)} faithfulness", line={"color": color}))
        fig.add_trace(go.Scatter(x=x, y=[p.completeness for p in pts], mode="lines",
                                 name=f"{_esc(method)} completeness", line={"color": color, "dash": "dot"}))
        if any(p.random_faithfulness is not None for p in pts):
            fig.add_trace(go.Scatter(x=x, y=[p.random_faithfulness for p in pts], mode="lines",
                                     name=f"random ({_esc(method)} sizes)",
                                     line={"color": color, "dash": "dash", "width": 1}, opacity=0.6))
    fig.update_layout(title=_esc(title), template="plotly_white", xaxis={"type": "log", "title": "nodes"},
                      yaxis={"title": "fraction of the model's metric"}, height=520)
    return fig
