"""Where each node of a circuit figure goes: one row per submodule in execution order (metric on top), and
either one column per token position (positions kept) or, summed over positions, each row's nodes ordered
by |score|, largest left. A labelled node takes more room than an unlabelled one, so that labels do not run
into each other; a cell or row with more nodes than fit wraps onto lines just below it.

The x-range is taken from the coordinates themselves, so every node lies inside the plot area."""

from __future__ import annotations

from dataclasses import dataclass

from ..circuit import Circuit
from ..nodes import METRIC_NODE, execution_order

MAX_PER_LINE = 40  # slots side by side in one row (summed) or one cell (positions kept) before wrapping
LABELLED_SPAN, PLAIN_SPAN = 2.4, 1.0  # slots a node takes with and without a visible label
COLUMN_GAP = 1.0


@dataclass
class Layout:
    rows: list[str]  # submodules, bottom to top
    pos: dict[str, tuple[float, float]]  # node → (x, y); y is the row index (lower lines of a row below it)
    centers: list[float]  # column centres (positions kept), else empty
    x_range: tuple[float, float]


def submodule_rows(circuit: Circuit) -> list[str]:
    """Submodules in execution order, bottom to top: embed, then per layer (z_l,) attn_l, mlp_l, resid_l.

    Rows of every submodule the circuit was scored on (metadata ``submodules``) are kept even when empty,
    so that circuits of one model line up."""
    return execution_order({circuit.ref(n).submodule for n in circuit.nodes}
                           | set(circuit.metadata.get("submodules") or []))


def n_positions(circuit: Circuit) -> int | None:
    """Columns of a positional circuit (its prompts' length), None when summed over positions."""
    if circuit.metadata.get("aggregation") != "none":
        return None
    found = [p for n in circuit.nodes if (p := circuit.ref(n).position) is not None]
    lengths = circuit.metadata.get("token_lengths") or []
    return max([*(p + 1 for p in found), *lengths, len(circuit.metadata.get("positions") or []), 1])


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


def _summed(circuit: Circuit, by_abs: list[str], row_of: dict[str, int], labelled: set[str], pos: dict) -> list:
    span = {n: LABELLED_SPAN if n in labelled else PLAIN_SPAN for n in by_abs}
    by_row: dict[str, list[str]] = {}
    for n in by_abs:
        by_row.setdefault(circuit.ref(n).submodule, []).append(n)
    width = min(MAX_PER_LINE, max((sum(span[n] for n in v) for v in by_row.values()), default=1.0))
    for sub, names in by_row.items():
        _spread(names, span, width, None, row_of[sub], pos)
    pos[METRIC_NODE] = (width / 2, len(row_of))
    return []


def _positional(circuit: Circuit, by_abs: list[str], row_of: dict[str, int], labelled: set[str], pos: dict,
                columns: int) -> list[float]:
    span = {n: LABELLED_SPAN if n in labelled else PLAIN_SPAN for n in by_abs}
    cells: dict[tuple[int, str], list[str]] = {}
    for n in by_abs:
        ref = circuit.ref(n)
        cells.setdefault((ref.position, ref.submodule), []).append(n)
    widths = [2.0] * columns
    for (p, _), names in cells.items():
        widths[p] = max(widths[p], min(MAX_PER_LINE / 2, sum(span[n] for n in names)))
    centers, x = [], 0.0
    for w in widths:
        centers.append(x + w / 2)
        x += w + COLUMN_GAP
    for (p, sub), names in cells.items():
        _spread(names, span, widths[p], centers[p], row_of[sub], pos)
    pos[METRIC_NODE] = (centers[-1], len(row_of))
    return centers


def layout(circuit: Circuit, labelled: set[str]) -> Layout:
    """Node coordinates, column centres and an x-range holding every node (and its label)."""
    rows = submodule_rows(circuit)
    row_of = {s: i for i, s in enumerate(rows)}
    by_abs = sorted(circuit.nodes, key=lambda n: -abs(circuit.score(n)))
    pos: dict[str, tuple[float, float]] = {}
    columns = n_positions(circuit)
    centers = (_summed(circuit, by_abs, row_of, labelled, pos) if columns is None
               else _positional(circuit, by_abs, row_of, labelled, pos, columns))
    xs = [x for x, _ in pos.values()] + centers
    pad = LABELLED_SPAN  # half a label's width either side, and some air
    return Layout(rows, pos, centers, (min(xs) - pad, max(xs) + pad))
