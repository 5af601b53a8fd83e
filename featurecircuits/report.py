"""Plain-text tables for the command line (the CLI and the demo print them)."""

from __future__ import annotations


def table(rows: list[dict], columns: list[str]) -> str:
    """Left-aligned columns with a dashed rule under the header."""
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    sep = "  ".join("-" * widths[c] for c in columns)
    body = ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([line, sep, *body])


def no_auc(curve, method: str) -> str | None:
    """Why a method of a faithfulness curve has no AUC (None: it has one): fewer than two circuit sizes above 0,
    or faithfulness undefined."""
    sizes = sorted({p.n_nodes for p in curve.series(method)})
    if len([s for s in sizes if s > 0]) < 2:
        return (f"its thresholds give circuits of {' and '.join(map(str, sizes))} nodes, and an AUC needs two sizes "
                "above 0; give thresholds that keep more nodes")
    if curve.auc(method) != curve.auc(method):
        return "faithfulness is undefined (the model's metric equals the empty circuit's)"
    return None


def auc_cell(curve, method: str, key: str = "faithfulness") -> str:
    """A curve's AUC for the table: three decimals, or ``n/a`` where there is none (:func:`no_auc` says why)."""
    value = curve.auc(method, key)
    return "n/a" if no_auc(curve, method) or value != value else f"{value:.3f}"
