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


MAX_POINTS = 5000  # per scatter: more nodes are drawn as a seeded uniform sample (the PCCs use every node)


def _drawn(n: int) -> list[int] | None:
    """Which of n points a scatter draws (None: all)."""
    if n <= MAX_POINTS:
        return None
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:MAX_POINTS].sort().values.tolist()


def feature_comparison_figure(comp):
    """A grid of scatter plots, one row per node kind (submodule kinds, then error nodes) and one column per
    method: each node's estimate against its AP, both averaged over pairs, with r under both poolings."""
    kinds, methods = comp.kinds, comp.methods
    titles = [f"{kind}: {m} (r={_r(comp.pcc, m, kind)} cm, {_r(comp.pcc_pairs, m, kind)} pxc)"
              for kind in kinds for m in methods]
    fig = make_subplots(rows=len(kinds), cols=len(methods), subplot_titles=titles, horizontal_spacing=0.06,
                        vertical_spacing=0.25 / max(1, len(kinds)))
    for r, kind in enumerate(kinds, 1):
        ap = comp.cells["ap"][kind]
        pick = _drawn(len(ap))
        x = ap.tolist() if pick is None else ap[pick].tolist()
        lim = max([abs(v) for v in x] or [1.0])
        for c, m in enumerate(methods, 1):
            est = comp.cells[m][kind]
            y = est.tolist() if pick is None else est[pick].tolist()
            fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", marker={"size": 4, "opacity": 0.6},
                                       marker_color=method_color(m), name=m, legendgroup=m, showlegend=(r == 1),
                                       hovertemplate="AP %{x:.4f}, estimate %{y:.4f}<extra></extra>"), row=r, col=c)
            fig.add_trace(go.Scattergl(x=[-lim, lim], y=[-lim, lim], mode="lines", line={"color": "#999", "width": 1},
                                       hoverinfo="skip", showlegend=False), row=r, col=c)
            shown = "" if pick is None else f" ({len(pick)} of {len(ap)} drawn)"
            fig.update_xaxes(title_text=f"AP ({kind}){shown}", row=r, col=c)
            fig.update_yaxes(title_text="estimate" if c == 1 else None, row=r, col=c)
    sample = f"at most {comp.sample} features per submodule and position" if comp.sample else "every active feature"
    fig.update_layout(title=esc(f"{comp.model} · {comp.task} · {comp.n_pairs} pairs: feature-level attribution vs "
                                f"activation patching ({sample}; each point a node averaged over pairs; grey: y = x)"),
                      template="plotly_white", height=300 * len(kinds) + 100, width=max(700, 360 * len(methods) + 80),
                      legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": -0.04, "yanchor": "top"})
    return fig


def _r(table, method: str, kind: str) -> str:
    value = table.get(method, {}).get(kind)
    return "n/a" if value is None or value != value else f"{value:.3f}"
