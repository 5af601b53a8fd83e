"""The RelP paper's component-level experiment: AP vs AtP vs RelP (vs IG) at every layer and position.

For resid_l, attn_l and mlp_l at every layer and token position, each method's score (summed over the
hidden dimension) is averaged over pairs; the Pearson correlation with AP is taken per component type
over all layer × position cells. Prompts of different token lengths form separate groups whose cells are
pooled for the correlation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .attribution import attribute, pearson
from .config import AttributionConfig
from .data import Batch, logit_diff
from .models import Model

KINDS = ("resid", "attn", "mlp")

# The RelP paper's Table 5 (IOI, Pearson correlation with activation patching), for reference.
PAPER_TABLE5 = {
    "Pythia-70M": {"resid": {"atp": 0.728, "relp": 0.898}, "mlp": {"atp": 0.507, "relp": 0.967}},
    "GPT-2 Small": {"mlp": {"atp": 0.195, "relp": 0.992}},
}


@dataclass
class Comparison:
    model: str
    task: str
    methods: list[str]
    n_pairs: int
    grids: dict[int, dict[str, dict[str, torch.Tensor]]]  # length → method → kind → (layers, positions)
    tokens: dict[int, list[str]]  # length → tokens of one clean prompt
    pcc: dict[str, dict[str, float]] = field(default_factory=dict)  # method → kind → PCC with AP
    normalized: bool = False
    configs: dict[str, dict] = field(default_factory=dict)  # method → AttributionConfig.to_dict()

    def to_dict(self) -> dict:
        return {"model": self.model, "task": self.task, "methods": self.methods, "n_pairs": self.n_pairs,
                "normalized": self.normalized, "pcc": self.pcc, "configs": self.configs,
                "groups": {str(k): {"tokens": self.tokens[k],
                                    "grids": {m: {kind: g.tolist() for kind, g in by_kind.items()}
                                              for m, by_kind in v.items()}}
                           for k, v in self.grids.items()}}


def pooled_cells(grids, method: str, kind: str) -> torch.Tensor:
    """Every layer × position cell of one method and component type, over all length groups."""
    return torch.cat([grids[t][method][kind].flatten() for t in sorted(grids)])


def normalized_logit_diff(batch: Batch, ld_clean: torch.Tensor, ld_patch: torch.Tensor):
    """``(LD − LD_patch) / (LD_clean − LD_patch)`` per example, as a metric for ``batch`` (and its
    tilings, which attribution methods use to run many patches at once)."""
    n = len(batch)

    def metric(logits, b):
        k = len(b) // n
        lo, hi = ld_patch.repeat(k), ld_clean.repeat(k)
        return (logit_diff(logits, b) - lo) / (hi - lo)

    metric.__name__ = "normalized_logit_diff"
    return metric


def compare(model: Model, batches: Sequence[Batch], *, methods: Sequence[str] = ("atp", "relp"),
            attribution: AttributionConfig | None = None, normalized: bool = False, max_batch: int = 256,
            task_name: str = "task", progress: bool = False) -> Comparison:
    """Every method against AP, with ``attribution``'s direction and rules (only the method replaced)."""
    methods = [m for m in methods if m != "ap"]
    base = (attribution or AttributionConfig()).with_(max_batch=max_batch).resolve(model.family.name)
    configs = {m: base.with_(method=m) for m in ["ap", *methods]}
    grids: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    counts: dict[int, int] = {}
    tokens: dict[int, list[str]] = {}
    for batch in tqdm(batches, desc="compare", disable=not progress):
        batch = batch.to(model.device)
        metric = logit_diff
        if normalized:
            with torch.no_grad():
                ld_c = logit_diff(model.hf(input_ids=batch.clean).logits, batch)
                ld_p = logit_diff(model.hf(input_ids=batch.patch).logits, batch)
            metric = normalized_logit_diff(batch, ld_c, ld_p)
        t = batch.n_tokens
        group = grids.setdefault(t, {})
        counts[t] = counts.get(t, 0) + len(batch)
        if t not in tokens and model.tokenizer is not None:
            tokens[t] = model.tokenizer.convert_ids_to_tokens(batch.clean[0].tolist())
        for method in ["ap", *methods]:
            res = attribute(model, batch, config=configs[method], metric=metric)
            per_kind = group.setdefault(method, {})
            for kind in KINDS:
                subs = [s.name for s in model.submodules if s.kind == kind]
                g = torch.stack([res.scores[s].sum(0) for s in subs]).detach().cpu()
                per_kind[kind] = per_kind.get(kind, 0) + g
    for t, group in grids.items():
        for per_kind in group.values():
            for kind in per_kind:
                per_kind[kind] = per_kind[kind] / counts[t]
    pcc = {}
    for method in methods:
        pcc[method] = {}
        for kind in KINDS:
            pcc[method][kind] = pearson(pooled_cells(grids, "ap", kind), pooled_cells(grids, method, kind))
    return Comparison(model.name, task_name, list(methods), sum(counts.values()), grids, tokens, pcc, normalized,
                      {m: c.to_dict() for m, c in configs.items()})


def comparison_figure(comp: Comparison):
    """Side-by-side AP / method heatmaps (layer × position) per component type for the most common
    prompt length, and AP-vs-method scatter plots over every cell."""
    import html

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    length = max(comp.grids, key=lambda t: comp.grids[t]["ap"]["resid"].numel())
    methods = ["ap", *comp.methods]
    cols = len(methods) + 1
    titles = []
    for kind in KINDS:
        titles += [f"{kind}: {m.upper()}" for m in methods] + [f"{kind}: AP vs methods"]
    fig = make_subplots(rows=len(KINDS), cols=cols, subplot_titles=titles, horizontal_spacing=0.04,
                        vertical_spacing=0.08)
    ticktext = [html.escape(t) for t in comp.tokens.get(length, [])]
    palette = {"atp": "#2e6fba", "relp": "#c0392b", "ig": "#27ae60"}
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
                                     marker_color=palette.get(m, "#555"),
                                     name=f"{m} (r={comp.pcc[m][kind]:.3f})", legendgroup=m,
                                     showlegend=(r == 1)), row=r, col=cols)
        fig.update_xaxes(title_text=f"AP score ({kind})", row=r, col=cols)
        fig.update_yaxes(title_text="method's estimate", row=r, col=cols)
    fig.update_layout(title=html.escape(f"{comp.model} · {comp.task} · {comp.n_pairs} pairs: "
                                        "component-level attribution vs activation patching"),
                      template="plotly_white", height=330 * len(KINDS) + 60, width=330 * cols + 80,
                      legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": -0.06, "yanchor": "top"},
                      margin={"b": 90})
    return fig
