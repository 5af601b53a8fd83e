"""Plain-text tables for the command line (the CLI and the demo print them)."""

from __future__ import annotations


def table(rows: list[dict], columns: list[str]) -> str:
    """Left-aligned columns with a dashed rule under the header."""
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    sep = "  ".join("-" * widths[c] for c in columns)
    body = ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([line, sep, *body])
