"""Self-contained HTML pages: plotly.js inlined once, one tab per figure, works offline.

The page script (``page.js``) wires circuit figures (edge slider, click a node to see its edges and details);
its style is ``page.css``. Every string that came from a tokenizer or a user is HTML-escaped before it
reaches the page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import plotly.graph_objects as go

from ..fileio import atomic_write_text


def esc(text) -> str:
    return html.escape(str(text), quote=True)


@dataclass
class Section:
    """One tab of a page titled ``title`` (plain text, escaped when written): a figure, or several ``views``
    of one thing (``(name, figure)``, the first shown first) a reader switches between."""

    title: str
    figure: go.Figure
    note: str = ""  # plain text shown above the figure, one paragraph per line
    views: list[tuple[str, go.Figure]] = field(default_factory=list)

    @property
    def figures(self) -> list[tuple[str, go.Figure]]:
        return self.views or [("", self.figure)]


def _asset(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def _script_json(obj) -> str:
    """JSON that is safe inside a <script> element (no '</' can close it)."""
    return json.dumps(obj).replace("</", "<\\/").replace("<!--", "<\\!--")


def _view_html(figure: dict) -> str:
    interactive = "featurecircuits" in (figure.get("layout", {}).get("meta") or {})
    controls = ("<div class='controls'><label>edges <input type='range' class='edges' min='0' step='1'>"
                "</label><span class='edgelabel'></span><button class='reset'>show all</button>"
                "<span class='help'>hover an edge for its weight; click a node: only its edges, and its details "
                "on the right</span></div>" if interactive else "")
    return (f"<div class='view'>{controls}<div class='wrap'><div class='plot'></div><div class='panel'></div></div>"
            "</div>")


def _section_html(index: int, section: Section, figures: list[dict]) -> str:
    note = "".join(f"<div class='note'>{esc(line)}</div>" for line in section.note.split("\n") if line)
    names = [name for name, _ in section.figures]
    switch = ("<div class='views'>" + "".join(f"<button data-view='{j}'>{esc(n)}</button>" for j, n in
                                              enumerate(names)) + "</div>") if len(names) > 1 else ""
    return (f"<section data-index='{index}'>{note}{switch}{''.join(_view_html(f) for f in figures)}</section>")


def page_html(sections: Sequence[Section], *, title: str = "featurecircuits") -> str:
    """One self-contained page: plotly.js inlined once, one tab per section (views switched within a tab)."""
    from plotly.offline import get_plotlyjs

    figures = [[json.loads(fig.to_json()) for _, fig in s.figures] for s in sections]
    tabs = "".join(f"<button onclick='fcShow({i})'>{esc(s.title)}</button>" for i, s in enumerate(sections))
    body = "".join(_section_html(i, s, f) for i, (s, f) in enumerate(zip(sections, figures, strict=True)))
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{_asset('page.css')}</style>\n"
        f"<script type='text/javascript'>{get_plotlyjs()}</script>\n</head><body>"
        f"<header><h1>{esc(title)}</h1><nav>{tabs}</nav></header>{body}\n"
        f"<script type='text/javascript'>const FC_FIGURES = {_script_json(figures)};\n{_asset('page.js')}</script>"
        "</body></html>\n"
    )


def write_page(sections: Sequence[Section], path: str | Path, *, title: str = "featurecircuits") -> Path:
    """Write one self-contained page holding several figures (tabs), atomically."""
    if not sections:
        raise ValueError("a page needs at least one figure")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page_html(sections, title=title))
    return path


def figure_title(fig: go.Figure) -> str:
    """The plain-text first line of a figure's title (the page title when none is given)."""
    text = fig.layout.title.text or "featurecircuits"
    return html.unescape(text.split("<br>")[0])


def write_html(fig: go.Figure, path: str | Path, *, title: str | None = None) -> Path:
    """One figure as a self-contained page (plotly.js inlined, no script from the network)."""
    title = figure_title(fig) if title is None else title
    return write_page([Section(title, fig)], path, title=title)
