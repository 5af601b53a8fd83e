"""The comparison page: AP and each method's layer × position heatmaps, and AP-vs-method scatter plots."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..compare import KINDS, Comparison, pooled_cells
from .page import esc
from .palette import method_color


def comparison_figure(comp: Comparison):
    """Side-by-side AP / method heatmaps (layer × position) per component type for the most common
    prompt length, and AP-vs-method scatter plots over every cell."""
    length = max(comp.grids, key=lambda t: comp.grids[t]["ap"]["resid"].numel())
    methods = ["ap", *comp.methods]
    cols = len(methods) + 1
    titles = []
    for kind in KINDS:
        titles += [f"{kind}: {m.upper()}" for m in methods] + [f"{kind}: AP vs methods"]
    fig = make_subplots(rows=len(KINDS), cols=cols, subplot_titles=titles, horizontal_spacing=0.04,
                        vertical_spacing=0.08)
    ticktext = [esc(t) for t in comp.tokens.get(length, [])]
    for r, kind in enumerate(KINDS, 1):
        grids = {m: comp.grids[length][m][kind] for m in methods}
        scale = max(float(g.abs().max()) for g in grids.values()) or 1.0
        for c, m in enumerate(methods, 1):
            fig.add_trace(go.Heatmap(z=grids[m].tolist(), zmin=-scale, zmax=scale, colorscale="RdBu_r",
                                     showscale=(c == 1 and r == 1), x=ticktext or None,
                                     colorbar={"title": {"text": "score"}, "len": 0.3, "y": 0.85, "thickness": 12},
                                     hovertemplate="layer %{y}, token %{x}: %{z:.3f}<extra></extra>"),
                          row=r, col=c)
            fig.update_yaxes(title_text="layer" if c == 1 else None, row=r, col=c)
        for m in comp.methods:
            ap, est = pooled_cells(comp.grids, "ap", kind), pooled_cells(comp.grids, m, kind)
            fig.add_trace(go.Scatter(x=ap.tolist(), y=est.tolist(), mode="markers", marker={"size": 5},
                                     marker_color=method_color(m),
                                     name=f"{m} (r={comp.pcc[m][kind]:.3f} cell means, "
                                          f"{comp.pcc_pairs.get(m, {}).get(kind, float('nan')):.3f} pairs × cells)",
                                     legendgroup=m,
                                     showlegend=(r == 1)), row=r, col=cols)
        fig.update_xaxes(title_text=f"AP score ({kind})", row=r, col=cols)
        fig.update_yaxes(title_text="method's estimate", row=r, col=cols)
    fig.update_layout(title=esc(f"{comp.model} · {comp.task} · {comp.n_pairs} pairs: "
                                        "component-level attribution vs activation patching "
                                        "(scatter: cells averaged over pairs; r for both poolings)"),
                      template="plotly_white", height=330 * len(KINDS) + 60, width=330 * cols + 80,
                      legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": -0.06, "yanchor": "top"},
                      margin={"b": 90})
    return fig
