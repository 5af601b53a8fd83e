"""Interactive, self-contained HTML pictures (plotly.js inlined once per page, works offline).

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

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from .circuit import METRIC_NODE, Circuit, parse_node_id
from .fileio import atomic_write_text

_POS, _NEG = "#c0392b", "#2e6fba"
_COLORSCALE = [[0, _NEG], [0.5, "#f2f2f2"], [1, _POS]]
_KIND_RANK = {"embed": 0, "z": 1, "attn": 2, "mlp": 3, "resid": 4}
_SYMBOLS = {"feature": "circle", "error": "triangle-up", "component": "square", "metric": "diamond"}
# edge width buckets by |weight| / weight_scale: (upper bound, line width, opacity)
_EDGE_BUCKETS = ((0.1, 0.6, 0.25), (0.3, 1.2, 0.4), (0.6, 2.2, 0.6), (math.inf, 3.5, 0.8))
_DEFAULT_EDGES_SHOWN = 300
_MAX_PER_LINE = 40  # nodes side by side in one row (summed) or one cell (positions kept) before wrapping


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


# -- layout -------------------------------------------------------------------------------------------

def _sub_of(circuit: Circuit, node: str) -> str:
    return circuit.graph.nodes[node].get("submodule") or parse_node_id(node)[0]


def _row_key(sub: str) -> tuple[int, int]:
    kind, _, layer = sub.partition("_")
    return (int(layer) if layer.isdigit() else -1, _KIND_RANK.get(kind, 5))


def submodule_rows(circuit: Circuit) -> list[str]:
    """Submodules in execution order, bottom to top: embed, then per layer (z_l,) attn_l, mlp_l, resid_l.

    Rows of every submodule the circuit was scored on (metadata ``submodules``) are kept even when empty,
    so that circuits of one model line up."""
    subs = {_sub_of(circuit, n) for n in circuit.nodes} | set(circuit.metadata.get("submodules") or [])
    return sorted(subs, key=_row_key)


def _kind(circuit: Circuit, node: str) -> str:
    if node == METRIC_NODE:
        return "metric"
    kind = circuit.graph.nodes[node].get("kind")
    if kind in _SYMBOLS:
        return kind
    _, part, feat, _ = parse_node_id(node)
    return "error" if part == "err" else "feature" if feat is not None else "component"


def _position(circuit: Circuit, node: str):
    pos = circuit.graph.nodes[node].get("position")
    return pos if pos is not None else parse_node_id(node)[3]


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
    feat = parse_node_id(node)[2]
    text = f"f{feat}"
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


# -- pages --------------------------------------------------------------------------------------------

@dataclass
class Section:
    """One figure of a page: a tab titled ``title`` (plain text, escaped when written)."""

    title: str
    figure: go.Figure
    note: str = ""  # plain text shown above the figure


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#222}
header{padding:10px 18px;background:#f7f7f7;border-bottom:1px solid #ddd}
header h1{font-size:18px;margin:0 0 6px 0}
nav button{font-size:13px;margin:2px 4px 2px 0;padding:4px 10px;border:1px solid #bbb;background:#fff;
 border-radius:4px;cursor:pointer}
nav button.on{background:#2e6fba;color:#fff;border-color:#2e6fba}
section{display:none;padding:6px 18px}
section.on{display:block}
.note{font-size:13px;color:#444;margin:4px 0}
.controls{font-size:13px;margin:6px 0;display:flex;gap:14px;align-items:center;flex-wrap:wrap}
.controls input[type=range]{width:320px}
.wrap{position:relative;overflow-x:auto}
.plot{min-width:1100px}
.panel{position:absolute;right:8px;top:60px;z-index:10;width:320px;font-size:12px;border:1px solid #bbb;
 border-radius:4px;padding:8px;display:none;max-height:75vh;overflow:auto;background:rgba(252,252,252,0.96);
 box-shadow:0 2px 8px rgba(0,0,0,0.15)}
.panel table{border-collapse:collapse;width:100%}
.panel td{padding:1px 4px;border-bottom:1px solid #eee}
.help{font-size:12px;color:#666}
"""

# Wires a circuit figure: the edge slider (strongest k edges), a click on a node shows only its edges and
# a panel with its details; everything reads the figure's layout.meta.featurecircuits.
_JS = r"""
const FC_ENT = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'};
function fcEsc(s){ return String(s).replace(/[&<>"']/g, c => FC_ENT[c]); }
function fcWire(div, sec){
  const fc = (div.layout.meta || {}).featurecircuits; if(!fc) return;
  const nb = fc.buckets.length, E = fc.edges, ids = fc.ids;
  const slider = sec.querySelector('.edges'), label = sec.querySelector('.edgelabel');
  const panel = sec.querySelector('.panel'), reset = sec.querySelector('.reset');
  let k = fc.shown, sel = null, dimmed = false;
  slider.max = E.length; slider.value = k;
  function bucket(w){
    const r = Math.abs(w) / fc.weight_scale;
    for(let i = 0; i < nb; i++){ if(r < fc.buckets[i]) return i; }
    return nb - 1;
  }
  function redraw(labelOnly){
    const xs=[], ys=[]; for(let b=0;b<2*nb;b++){xs.push([]); ys.push([]);}
    let n=0;
    for(let i=0;i<E.length;i++){
      const e=E[i];
      if(sel===null ? i>=k : (e[0]!==sel && e[1]!==sel)) continue;
      const b=(e[2]>=0?0:nb)+bucket(e[2]);
      xs[b].push(fc.x[e[0]], fc.x[e[1]], null); ys[b].push(fc.y[e[0]], fc.y[e[1]], null); n++;
    }
    if(!labelOnly) Plotly.restyle(div, {x: xs, y: ys}, fc.edge_traces);
    let op = null;
    if(sel!==null){
      const near = new Set([sel]); for(const e of E){ if(e[0]===sel) near.add(e[1]); if(e[1]===sel) near.add(e[0]); }
      op = ids.map((_, i) => near.has(i) ? 1 : 0.15);
    }
    if(!labelOnly && (op !== null || dimmed))
      Plotly.restyle(div, {'marker.opacity': [op===null ? 1 : op]}, [fc.node_trace]);
    dimmed = op !== null;
    const t = k>0 && k<=E.length ? Math.abs(E[k-1][2]) : 0;
    label.textContent = sel===null
      ? `showing the ${k} strongest of ${E.length} edges` + (k>0 ? ` (|weight| ≥ ${t.toPrecision(3)})` : '')
      : `showing the ${n} edges of ${ids[sel]} (click another node, or "show all")`;
  }
  function showPanel(i){
    const rows = E.filter(e => e[0]===i || e[1]===i).slice(0, 40).map(e =>
      `<tr><td>${e[0]===i ? '→ ' + fcEsc(ids[e[1]]) : '← ' + fcEsc(ids[e[0]])}</td>` +
      `<td>${e[2].toPrecision(3)}</td></tr>`);
    const hover = div.data[fc.node_trace].hovertext[i];
    panel.innerHTML = `<div>${hover}</div><p><b>edges</b> (strongest first)</p><table>${rows.join('')}</table>`;
    panel.style.display = 'block';
  }
  slider.addEventListener('input', () => { k = +slider.value; sel = null; panel.style.display='none'; redraw(); });
  reset.addEventListener('click', () => { sel = null; panel.style.display='none'; redraw(); });
  div.on('plotly_click', ev => {
    const p = ev.points[0]; if(p.curveNumber !== fc.node_trace) return;
    sel = p.pointNumber; showPanel(sel); redraw();
    history.replaceState(null, '', '#tab=' + sec.dataset.index + '&node=' + encodeURIComponent(ids[sel]));
  });
  const m = location.hash.match(/node=([^&]+)/);  // a shared link can select a node
  const start = m ? ids.indexOf(decodeURIComponent(m[1])) : -1;
  if(start >= 0){ sel = start; showPanel(sel); redraw(); }
  else redraw(true);  // the figure already shows the strongest edges: only the label to fill in
}
function fcShow(i){
  document.querySelectorAll('nav button').forEach((b, j) => b.classList.toggle('on', i===j));
  document.querySelectorAll('section').forEach((s, j) => s.classList.toggle('on', i===j));
  if(!new RegExp('tab=' + i + '(&|$)').test(location.hash)) history.replaceState(null, '', '#tab=' + i);
  const sec = document.querySelectorAll('section')[i], div = sec.querySelector('.plot');
  if(!div.dataset.drawn){
    const fig = FC_FIGURES[i], t0 = performance.now();
    Plotly.newPlot(div, fig.data, fig.layout, {responsive: true, displaylogo: false}).then(() => {
      div.dataset.drawn = '1'; fcWire(div, sec);
      div.dataset.plotMs = Math.round(performance.now() - t0);  // measured by tests and benchmarks
      if(!document.body.dataset.paintMs) document.body.dataset.paintMs = Math.round(performance.now());
    });
  } else { Plotly.Plots.resize(div); }
}
fcShow(Math.min(FC_FIGURES.length - 1, +(location.hash.match(/tab=(\d+)/) || [0, 0])[1]));
"""


def _script_json(obj) -> str:
    """JSON that is safe inside a <script> element (no '</' can close it)."""
    return json.dumps(obj).replace("</", "<\\/").replace("<!--", "<\\!--")


def page_html(sections: Sequence[Section], *, title: str = "featurecircuits") -> str:
    """One self-contained page: plotly.js inlined once, one tab per section."""
    from plotly.offline import get_plotlyjs

    figures = [json.loads(s.figure.to_json()) for s in sections]
    tabs = "".join(f"<button onclick='fcShow({i})'>{_esc(s.title)}</button>" for i, s in enumerate(sections))
    body = []
    for s, fig in zip(sections, figures, strict=True):
        interactive = "featurecircuits" in (fig.get("layout", {}).get("meta") or {})
        controls = ("<div class='controls'><label>edges <input type='range' class='edges' min='0' step='1'>"
                    "</label><span class='edgelabel'></span><button class='reset'>show all</button>"
                    "<span class='help'>click a node: only its edges, and its details on the right</span></div>"
                    if interactive else "")
        note = f"<div class='note'>{_esc(s.note)}</div>" if s.note else ""
        body.append(f"<section data-index='{len(body)}'>{note}{controls}<div class='wrap'><div class='plot'></div>"
                    f"<div class='panel'></div></div></section>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style>\n"
        f"<script type='text/javascript'>{get_plotlyjs()}</script>\n</head><body>"
        f"<header><h1>{_esc(title)}</h1><nav>{tabs}</nav></header>{''.join(body)}\n"
        f"<script type='text/javascript'>const FC_FIGURES = {_script_json(figures)};\n{_JS}</script>"
        "</body></html>\n"
    )


def write_page(sections: Sequence[Section], path: str | Path, *, title: str = "featurecircuits") -> Path:
    """Write one self-contained page holding several figures (tabs), atomically."""
    if not sections:
        raise ValueError("a page needs at least one figure")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page_html(sections, title=title))
    return path


def write_html(fig: go.Figure, path: str | Path, *, title: str | None = None) -> Path:
    """One figure as a self-contained page (plotly.js inlined, no script from the network)."""
    if title is None:
        text = fig.layout.title.text or "featurecircuits"
        title = html.unescape(text.split("<br>")[0])
    return write_page([Section(title, fig)], path, title=title)


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
