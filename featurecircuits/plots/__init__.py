"""Interactive, self-contained HTML figures (plotly.js inlined once per page, works offline).

- :mod:`.circuit`: a circuit as a graph (rows by submodule, token columns, labels), and a page of circuits;
- :mod:`.curve`: faithfulness-vs-size curves;
- :mod:`.compare`: the AP-vs-methods comparison (heatmaps and scatter plots);
- :mod:`.page`: pages of several figures as tabs; :mod:`.palette`: the colours they share.
"""

from .circuit import circuit_figure, circuits_page, describe, shared_scales, submodule_rows
from .compare import comparison_figure
from .curve import curve_figure
from .page import Section, figure_title, page_html, write_html, write_page
from .palette import method_color

__all__ = ["Section", "circuit_figure", "circuits_page", "comparison_figure", "curve_figure", "describe",
           "figure_title", "method_color", "page_html", "shared_scales", "submodule_rows", "write_html", "write_page"]

