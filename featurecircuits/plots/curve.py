"""Faithfulness-vs-size curves."""

from __future__ import annotations

import plotly.graph_objects as go

from .page import esc
from .palette import method_color


def curve_figure(curve, *, title: str = "Faithfulness vs circuit size") -> go.Figure:
    """Faithfulness (solid) and completeness (dotted) against the number of nodes, one colour per method;
    the random-circuit baseline dashed."""
    fig = go.Figure()
    for method in curve.methods():
        pts = [p for p in curve.series(method) if p.n_nodes > 0]
        color = method_color(method)
        x = [p.n_nodes for p in pts]
        fig.add_trace(go.Scatter(x=x, y=[p.faithfulness for p in pts], mode="lines+markers",
                                 name=f"{esc(method)} faithfulness", line={"color": color}))
        fig.add_trace(go.Scatter(x=x, y=[p.completeness for p in pts], mode="lines",
                                 name=f"{esc(method)} completeness", line={"color": color, "dash": "dot"}))
        if any(p.random_faithfulness is not None for p in pts):
            fig.add_trace(go.Scatter(x=x, y=[p.random_faithfulness for p in pts], mode="lines",
                                     name=f"random ({esc(method)} sizes)",
                                     line={"color": color, "dash": "dash", "width": 1}, opacity=0.6))
    fig.update_layout(title=esc(title), template="plotly_white", xaxis={"type": "log", "title": "nodes"},
                      yaxis={"title": "fraction of the model's metric"}, height=520)
    return fig
