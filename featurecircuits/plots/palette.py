"""Colours every figure shares: the sign of a score, and one colour per method (keyed by its name, so a
method is the same colour in the curve, the comparison and any other figure)."""

from __future__ import annotations

POSITIVE, NEGATIVE = "#c0392b", "#2e6fba"
SCORE_COLORSCALE = [[0, NEGATIVE], [0.5, "#f2f2f2"], [1, POSITIVE]]
METHOD_COLORS = {"relp": "#c0392b", "atp": "#2e6fba", "ig": "#27ae60", "ap": "#444444"}
_SPARE = ("#8e44ad", "#e67e22", "#16a085", "#7f8c8d")


def method_color(name: str) -> str:
    """The colour of a method (``relp[attention=ah]`` takes relp's); others get a stable spare colour."""
    base = name.split("[", 1)[0]
    if base in METHOD_COLORS:
        return METHOD_COLORS[base]
    return _SPARE[sum(map(ord, name)) % len(_SPARE)]
