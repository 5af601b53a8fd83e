"""The circuit figure and the page of several circuits.

A circuit is drawn for reading: one row per submodule in execution order (``embed``, then per layer
``attn_l``, ``mlp_l``, ``resid_l``; :mod:`.layout`), positions kept one column per token position headed by
the clean token (``/ patch token`` where the pair differs) and its role (IO, S1, S2, END), or summed over
positions with each row ordered by |score|. Features are circles labelled ``f812 ‹label›``, error terms
triangles ``ε``, components squares, the metric a diamond named by its tokens. Colour and sign follow one
convention (:meth:`featurecircuits.circuit.Circuit.effect`): red pushes the metric toward the clean answer,
blue toward the patch answer; size is |score|. The page lets a reader switch between positions and the
summed view, thin the edges with a slider, hover an edge for its weight and endpoints, and click a node to
see only its edges and a panel with its details.

Every string that came from a tokenizer or a user is HTML-escaped before it reaches the page: plotly
renders hover text, labels and titles as HTML.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from ..circuit import Circuit
from ..errors import UsageError
from ..nodes import METRIC_NODE
from ..registry import PLOT_MAX_EDGES as MAX_EDGES
from ..registry import PLOT_MAX_NODES as MAX_NODES
from . import context
from .curve import curve_figure
from .layout import layout, n_positions, submodule_rows
from .page import Section, esc, write_page
from .palette import NEGATIVE, POSITIVE, SCORE_COLORSCALE

__all__ = ["MAX_EDGES", "MAX_NODES", "PlotTooLarge", "check_size", "circuit_figure", "circuit_sections",
           "circuits_page", "shared_scales", "submodule_rows"]

_SYMBOLS = {"feature": "circle", "error": "triangle-up", "component": "square", "metric": "diamond"}
# edge width buckets by |weight| / weight_scale: (upper bound, line width, opacity)
_EDGE_BUCKETS = ((0.1, 0.6, 0.25), (0.3, 1.2, 0.4), (0.6, 2.2, 0.6), (math.inf, 3.5, 0.8))
_DEFAULT_EDGES_SHOWN = 300


def _kind(circuit: Circuit, node: str) -> str:
    return "metric" if node == METRIC_NODE else circuit.ref(node).kind


def _short(circuit: Circuit, node: str) -> str:
    """A node's name and label, plain text: ``resid_3/f12@5 ‹pilot›``."""
    if node == METRIC_NODE:
        return context.metric_name(circuit)
    members = circuit.graph.nodes[node].get("members")
    if members:
        return f"group {circuit.label(node)} ({len(members)} node{'s' * (len(members) > 1)})"
    label = circuit.label(node) if circuit.ref(node).kind == "feature" else None
    return node + (f" {_quoted(label)}" if label else "")


def _label(circuit: Circuit, node: str) -> str:
    members = circuit.graph.nodes[node].get("members") if node != METRIC_NODE else None
    if members:  # a collapsed group (featurecircuits.groups)
        return f"<b>{esc(circuit.label(node))}</b><br>{len(members)} node{'s' * (len(members) > 1)}"
    kind = _kind(circuit, node)
    if kind == "error":
        return "ε"
    if kind == "component":
        return esc(circuit.ref(node).submodule)
    label = circuit.label(node)
    return f"f{circuit.ref(node).feature}" + (f"<br>{esc(_quoted(label))}" if label else "")


def _quoted(label: str) -> str:
    """``‹pilot›`` for a bare token label; a dossier's label (``‹pilots› → were``) already marks its tokens."""
    return label if "‹" in label else f"‹{label}›"


def _hover(circuit: Circuit, node: str) -> str:
    a, g = circuit.graph.nodes[node], circuit.graph
    if node == METRIC_NODE:
        lines = [f"<b>{esc(line)}</b>" if i == 0 else esc(line)
                 for i, line in enumerate(context.metric_hover(circuit).split("\n"))]
    else:
        lines = [f"<b>{esc(_short(circuit, node))}</b>",
                 f"{_kind(circuit, node)} · toward the clean answer {circuit.effect(node):+.4f} "
                 f"(score {a.get('score', 0.0):+.4f}, {circuit.metadata.get('direction', 'noising')})"]
        if a.get("members"):
            shown = a["members"][:12]
            lines.append("members: " + ", ".join(esc(m) for m in shown) + (" …" if len(a["members"]) > 12 else ""))
        elif a.get("label_source"):
            lines.append(f"label from {esc(a['label_source'])}")
        if a.get("mean_activation") is not None:
            lines.append(f"mean activation {a['mean_activation']:.3f}")
        lines += ["· " + esc(ctx) for ctx in a.get("top_contexts") or []]
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


def circuit_figure(circuit: Circuit, *, title: str | None = None, score_scale: float | None = None,
                   weight_scale: float | None = None, label_top: int | None = None,
                   edges_shown: int | None = None, cards: dict[str, dict] | None = None) -> go.Figure:
    """The circuit as a plotly figure (see the module docstring for how it reads).

    ``score_scale``/``weight_scale``: the |score| and |weight| drawn at full colour/size (default this
    circuit's largest; :func:`shared_scales` of several circuits draws them on one scale). ``label_top``:
    how many of the most important nodes carry a visible label (default all up to 40, else a quarter, 40 to
    80). ``edges_shown``: how many of the strongest edges are drawn at first (the page has a slider).
    ``cards``: feature id (``resid_3/f12``) → a dossier card (:func:`featurecircuits.features.compact_card`),
    shown when a node of that feature is clicked."""
    score_scale = score_scale or max((abs(circuit.score(n)) for n in circuit.nodes), default=1.0) or 1.0
    edges = sorted(circuit.edges, key=lambda e: -abs(e[2]))
    weight_scale = weight_scale or (abs(edges[0][2]) if edges else 1.0) or 1.0
    n = len(circuit)
    if label_top is None:
        label_top = n if n <= 40 else min(80, max(40, n // 4))
    labelled = set(circuit.top(label_top))
    where = layout(circuit, labelled)
    shown = min(len(edges), _DEFAULT_EDGES_SHOWN if edges_shown is None else edges_shown)
    names = [*circuit.nodes, METRIC_NODE]
    index = {name: i for i, name in enumerate(names)}
    signed = [(index[u], index[v], circuit.sign * float(w)) for u, v, w in edges]
    traces = _edge_traces(signed[:shown], [where.pos[x] for x in names], weight_scale)
    traces.append(_edge_hover_trace(signed[:shown], [where.pos[x] for x in names], names, circuit))
    kinds = [_kind(circuit, x) for x in names]
    traces.append(_node_trace(circuit, names, kinds, where.pos, labelled, score_scale))
    traces += _legend_traces("component" in kinds)
    fig = go.Figure(traces)
    fig.update_layout(**_circuit_layout(circuit, where, title))
    nb = len(_EDGE_BUCKETS)
    fig.update_layout(meta={"featurecircuits": {
        "node_trace": 2 * nb + 1, "edge_traces": list(range(2 * nb)), "hover_trace": 2 * nb, "ids": names,
        "labels": [_short(circuit, x) for x in names], "x": [where.pos[x][0] for x in names],
        "y": [where.pos[x][1] for x in names], "edges": [list(e) for e in signed], "weight_scale": weight_scale,
        "buckets": [b[0] if math.isfinite(b[0]) else 1e300 for b in _EDGE_BUCKETS], "shown": shown,
        "cards": {i: cards[key] for i, x in enumerate(names) if x != METRIC_NODE  # a group has no one card
                  and not circuit.graph.nodes[x].get("members")
                  and (key := circuit.ref(x).summed().id) in (cards or {})}}})
    return fig


def _edge_traces(edges, xy, weight_scale: float) -> list[go.Scatter]:
    """One trace per (sign, width bucket), refilled by the page's script when thinned or selected."""
    nb = len(_EDGE_BUCKETS)
    xs: list[list] = [[] for _ in range(2 * nb)]
    ys: list[list] = [[] for _ in range(2 * nb)]
    for u, v, w in edges:
        b = (0 if w >= 0 else nb) + _bucket(w, weight_scale)
        xs[b] += [xy[u][0], xy[v][0], None]
        ys[b] += [xy[u][1], xy[v][1], None]
    traces = []
    for b in range(2 * nb):
        _, width, opacity = _EDGE_BUCKETS[b % nb]
        traces.append(go.Scatter(x=xs[b], y=ys[b], mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"width": width, "color": POSITIVE if b < nb else NEGATIVE}, opacity=opacity))
    return traces


def edge_hover_text(circuit: Circuit, source: str, target: str, weight: float) -> str:
    return (f"<b>{esc(_short(circuit, source))}</b> → <b>{esc(_short(circuit, target))}</b><br>"
            f"edge toward the clean answer {weight:+.4f}")


def _edge_hover_trace(edges, xy, names, circuit: Circuit) -> go.Scatter:
    """Invisible markers at the edges' midpoints: hovering one shows the edge's weight and endpoints."""
    return go.Scatter(x=[(xy[u][0] + xy[v][0]) / 2 for u, v, _ in edges],
                      y=[(xy[u][1] + xy[v][1]) / 2 for u, v, _ in edges], mode="markers",
                      marker={"size": 9, "color": "rgba(0,0,0,0)"}, showlegend=False, hoverinfo="text",
                      hovertext=[edge_hover_text(circuit, names[u], names[v], w) for u, v, w in edges])


def _node_trace(circuit, names, kinds, pos, labelled, score_scale: float) -> go.Scatter:
    """Every node: symbol by kind, colour by effect, size by |score|, labels on the ``labelled`` ones."""
    effects = [circuit.effect(x) if x != METRIC_NODE else 0.0 for x in names]
    return go.Scatter(
        x=[pos[x][0] for x in names], y=[pos[x][1] for x in names], mode="markers+text",
        text=[_label(circuit, x) if x in labelled else "" for x in names],
        textposition="top center", textfont={"size": 10, "color": "#222"},
        marker={"size": [26 if k == "metric" else 7 + 23 * math.sqrt(min(1.0, abs(s) / score_scale))
                         for k, s in zip(kinds, effects, strict=True)],
                "color": [max(-score_scale, min(score_scale, s)) for s in effects],
                "colorscale": SCORE_COLORSCALE, "cmin": -score_scale, "cmax": score_scale,
                "symbol": [_SYMBOLS[k] for k in kinds], "line": {"width": 1, "color": "#333"},
                "colorbar": {"title": {"text": "toward the<br>clean answer<br>red + / blue −"}, "thickness": 14,
                             "len": 0.6, "x": 1.01, "y": 0.4}},
        hovertext=[_hover(circuit, x) for x in names], hoverinfo="text", customdata=names,
        name="nodes", showlegend=False)


def _legend_traces(with_components: bool) -> list[go.Scatter]:
    """Legend entries for the node shapes and edge colours (no data)."""
    traces = []
    for label, symbol in (("feature (f<i>index</i> ‹label›; size ∝ |score|)", "circle"),
                          ("error term ε (x − x̂)", "triangle-up"), ("component", "square"),
                          ("metric", "diamond")):
        if symbol == "square" and not with_components:
            continue
        traces.append(go.Scatter(x=[None], y=[None], mode="markers", name=label, hoverinfo="skip",
                                 marker={"symbol": symbol, "size": 11, "color": "#bbb",
                                         "line": {"width": 1, "color": "#333"}}))
    for label, color in (("edge toward the clean answer", POSITIVE), ("edge toward the patch answer", NEGATIVE)):
        traces.append(go.Scatter(x=[None], y=[None], mode="lines", name=label, line={"color": color, "width": 2},
                                 hoverinfo="skip"))
    return traces


def _xaxis(circuit: Circuit, where) -> dict:
    xaxis = {"showgrid": False, "zeroline": False, "range": list(where.x_range)}
    if not where.centers:
        xaxis.update(showticklabels=False, title={"text": "summed over positions: a row's nodes by |score|, largest "
                                                          "left"})
        return xaxis
    heads = context.column_labels(circuit, len(where.centers))
    xaxis.update(tickvals=where.centers, tickangle=0, ticktext=[
        "<br>".join(f"<b>{esc(part)}</b>" if i == 0 and part.isupper() else esc(part)
                    for i, part in enumerate(h.split("\n"))) for h in heads],
        title={"text": "token position (clean token / patch token where they differ; IOI role)"})
    return xaxis


def _circuit_layout(circuit: Circuit, where, title) -> dict:
    """Title, one row per submodule (the metric, named by its tokens, on top), token or score-ordered columns."""
    meta = circuit.metadata
    heading = title or (f"{meta.get('method', '?')} circuit · {meta.get('model', '')} · {len(circuit)} nodes, "
                        f"{circuit.n_edges} edges")
    n_rows = len(where.rows) + 1
    return dict(
        title={"text": esc(heading) + f"<br><span style='font-size:12px;color:#555'>{esc(context.describe(circuit))}"
                                      "</span>", "y": 1.0, "yref": "container", "yanchor": "top", "pad": {"t": 12}},
        template="plotly_white", height=170 + 66 * n_rows, hovermode="closest",
        margin={"l": 70, "r": 40, "t": 125, "b": 90}, xaxis=_xaxis(circuit, where),
        yaxis={"tickvals": list(range(n_rows)),
               "ticktext": [esc(r) for r in where.rows] + [f"<b>{esc(context.metric_name(circuit))}</b>"],
               "range": [-0.7, n_rows - 0.3], "showgrid": True, "gridcolor": "#f0f0f0", "zeroline": False,
               "fixedrange": False, "automargin": True},
        legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom", "font": {"size": 11}})


class PlotTooLarge(UsageError):
    """A circuit beyond the size a page draws without being asked."""


def check_size(circuit: Circuit, name: str, *, max_nodes: int = MAX_NODES, max_edges: int = MAX_EDGES) -> None:
    """Refuse, before any drawing, a circuit larger than ``max_nodes`` nodes or ``max_edges`` edges, saying how
    to draw part of it or to raise the limit."""
    if len(circuit) > max_nodes or circuit.n_edges > max_edges:
        raise PlotTooLarge(
            f"{name} has {len(circuit):,} nodes and {circuit.n_edges:,} edges, more than a page draws without "
            f"being asked ({max_nodes:,} nodes, {max_edges:,} edges: a page that size takes minutes to build and to "
            "open): draw its largest nodes with --top-k K (or fewer edges with --edge-threshold W), or raise the "
            "limit with --max-nodes N / --max-edges M (API: Circuit.prune, max_nodes=, max_edges=)")


def circuit_sections(circuits: dict[str, Circuit], *, evaluations: dict | None = None, shared_scale: bool = False,
                     dossiers=None, labels=None, groups=None, max_nodes: int = MAX_NODES,
                     max_edges: int = MAX_EDGES, **figure_options) -> list[Section]:
    """One tab per circuit: its notes and, for a positional circuit, the positions and the summed view.
    ``dossiers`` (:class:`featurecircuits.features.Dossiers`) and ``labels`` (node id → Label) label the
    feature nodes (set on the circuits) and give each a card; ``groups`` (name → node ids,
    :mod:`featurecircuits.groups`) are drawn collapsed in every view. A circuit beyond ``max_nodes`` or
    ``max_edges`` is refused (:class:`PlotTooLarge`) before anything is drawn."""
    from ..features.circuits import annotate, compact_card
    from ..groups import check_groups, grouped

    for name, c in circuits.items():
        check_size(c, name, max_nodes=max_nodes, max_edges=max_edges)
        if groups:
            check_groups(c, groups)
    scales = shared_scales(list(circuits.values())) if shared_scale else {}
    sections = []
    for name, c in circuits.items():
        cards = {c.ref(n).summed().id: compact_card(card) for n, card in annotate(c, dossiers, labels).items()} \
            if dossiers is not None or labels else None
        views = [("positions", c)] if n_positions(c) is not None else []
        views.append(("summed over positions", c.summed()))
        views = [(label, grouped(v, groups) if groups else v) for label, v in views]
        figures = [(label, circuit_figure(v, **scales, cards=cards, **figure_options)) for label, v in views]
        scale = scales or {"score_scale": max((abs(c.score(n)) for n in c.nodes), default=0.0)}
        notes = context.notes(c, (evaluations or {}).get(name))
        notes.append(("Colours on one scale for every tab" if shared_scale else "Colours on this tab's own scale")
                     + f": |score| {scale['score_scale']:.3g} = full colour and size.")
        sections.append(Section(name, figures[0][1], note="\n".join(notes), views=figures))
    return sections


def circuits_page(circuits: dict[str, Circuit], path: str | Path, *, curves: dict | None = None,
                  evaluations: dict | None = None, title: str = "featurecircuits", shared_scale: bool = False,
                  dossiers=None, labels=None, groups=None, **figure_options) -> Path:
    """Several circuits (and faithfulness curves) on one self-contained page, one tab each: positions and the
    summed view where positions are kept, the notes of :func:`featurecircuits.plots.context.notes`
    (``evaluations``: a Faithfulness per circuit name, shown with the pairs it was measured on), each tab on
    its own colour scale unless ``shared_scale``. ``curves``: name → Curve (or a figure); each circuit is
    marked on the curve of its method. ``dossiers``/``labels``/``groups``: feature labels, cards and groups
    drawn collapsed (see :func:`circuit_sections`)."""
    sections = circuit_sections(circuits, evaluations=evaluations, shared_scale=shared_scale, dossiers=dossiers,
                                labels=labels, groups=groups, **figure_options)
    for name, curve in (curves or {}).items():
        marks = [(n, c.metadata.get("method"), len(c), (evaluations or {}).get(n)) for n, c in circuits.items()
                 if _same_task(c, curve)]
        fig = curve if isinstance(curve, go.Figure) else curve_figure(curve, title=name, marks=marks)
        sections.append(Section(name, fig))
    return write_page(sections, path, title=title)


def _same_task(circuit: Circuit, curve) -> bool:
    """A circuit is marked on a curve of its task, with the same node kind (positions kept or summed)."""
    task = circuit.metadata.get("task") or {}
    config = getattr(curve, "config", {})
    return (task.get("name") if isinstance(task, dict) else task) == config.get("task") and \
        circuit.metadata.get("aggregation") == config.get("aggregation")
