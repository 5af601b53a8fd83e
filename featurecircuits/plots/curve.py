"""Faithfulness-vs-size curves: faithfulness above (higher is better), completeness below (lower is better),
one colour per method with its area under the curve in the legend, random circuits of the same sizes as a
grey band, and the circuits of a page marked where they sit."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .page import esc
from .palette import method_color

_BAND = "rgba(110,110,110,0.3)"


def _random_band(curve) -> go.Scatter | None:
    """Random circuits of every method's sizes, pooled: a band from the lowest to the highest faithfulness
    measured at each size."""
    pts = sorted((p.n_nodes, p.random_faithfulness) for p in curve.points
                 if p.n_nodes > 0 and p.random_faithfulness is not None and math.isfinite(p.random_faithfulness))
    if not pts:
        return None
    sizes = sorted({n for n, _ in pts})
    lo = [min(f for n, f in pts if n == s) for s in sizes]
    hi = [max(f for n, f in pts if n == s) for s in sizes]
    return go.Scatter(x=sizes + sizes[::-1], y=hi + [min(v, 0.0) for v in lo][::-1], fill="toself", fillcolor=_BAND,
                      line={"width": 1, "color": "rgba(90,90,90,0.6)", "dash": "dot"}, hoverinfo="skip",
                      name="random circuits of the same sizes (shaded up to their faithfulness)", legendgroup="random")


def _marks(fig, curve, marks) -> None:
    for name, method, n_nodes, evaluation in marks or ():
        if method not in curve.methods() or evaluation is None:
            continue
        e = evaluation if isinstance(evaluation, dict) else vars(evaluation)
        for row, key in ((1, "faithfulness"), (2, "completeness")):
            fig.add_trace(go.Scatter(x=[n_nodes], y=[e[key]], mode="markers+text", text=[esc(name)] if row == 1
                                     else None, textposition="top center",
                                     marker={"symbol": "star", "size": 15, "color": method_color(method),
                                             "line": {"width": 1, "color": "#222"}},
                                     name=f"this page's {esc(name)}", legendgroup=f"mark-{name}",
                                     showlegend=row == 1, hovertext=f"{esc(name)}: {n_nodes} nodes, {key} "
                                                                    f"{e[key]:.3f}", hoverinfo="text"), row=row, col=1)


def curve_figure(curve, *, title: str = "Faithfulness vs circuit size", marks=None) -> go.Figure:
    """Faithfulness (top) and completeness (bottom) against the number of nodes, one colour per method (AUC
    over log10 nodes in the legend); random baselines a grey band; ``marks``: (name, method, nodes,
    evaluation) of circuits to mark on their method's curve."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.62, 0.38],
                        subplot_titles=("faithfulness (higher is better)",
                                        "completeness: the model with the circuit ablated (lower is better)"))
    band = _random_band(curve)
    if band is not None:
        fig.add_trace(band, row=1, col=1)
    for method in curve.methods():
        pts = [p for p in curve.series(method) if p.n_nodes > 0]
        color, x = method_color(method), [p.n_nodes for p in pts]
        auc = curve.auc(method)
        label = f"{esc(method)} (AUC {auc:.3f})" if math.isfinite(auc) else f"{esc(method)} (AUC: fewer than 2 sizes)"
        fig.add_trace(go.Scatter(x=x, y=[p.faithfulness for p in pts], mode="lines+markers", name=label,
                                 legendgroup=method, line={"color": color}), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=[p.completeness for p in pts], mode="lines+markers", name=label,
                                 legendgroup=method, showlegend=False, line={"color": color, "dash": "dot"}),
                      row=2, col=1)
    _marks(fig, curve, marks)
    split = getattr(curve, "config", {}).get("split")
    subtitle = f"evaluated on {curve.config.get('n_examples')} {split} pairs" if split else ""
    fig.update_layout(title=esc(title) + (f"<br><span style='font-size:12px;color:#555'>{esc(subtitle)}</span>"
                                          if subtitle else ""),
                      template="plotly_white", height=680, legend={"font": {"size": 11}})
    fig.update_xaxes(type="log", row=1, col=1)
    fig.update_xaxes(type="log", title_text="nodes in the circuit", row=2, col=1)
    fig.update_yaxes(title_text="fraction of the model's metric", row=1, col=1)
    fig.update_yaxes(title_text="fraction", row=2, col=1)
    return fig
