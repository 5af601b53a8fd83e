"""Interactive, self-contained HTML figures (plotly.js inlined once per page, works offline).

- :mod:`.circuit`: a circuit as a graph, and a page of circuits; :mod:`.layout`: where its nodes go (rows by
  submodule, token columns); :mod:`.context`: the words around it (metric, example, faithfulness, signs);
- :mod:`.curve`: faithfulness-vs-size curves;
- :mod:`.compare`: the AP-vs-methods comparison (heatmaps and scatter plots);
- :mod:`.page`: pages of several figures as tabs; :mod:`.palette`: the colours they share.
"""

from .circuit import (
    MAX_EDGES,
    MAX_NODES,
    PlotTooLarge,
    check_size,
    circuit_figure,
    circuit_sections,
    circuits_page,
    shared_scales,
)
from .compare import comparison_figure
from .context import describe
from .curve import curve_figure
from .layout import submodule_rows
from .page import Section, figure_title, page_html, write_html, write_page
from .palette import method_color

__all__ = ["MAX_EDGES", "MAX_NODES", "PlotTooLarge", "Section", "check_size", "circuit_figure",
           "circuit_sections", "circuits_page", "comparison_figure", "curve_figure",
           "describe", "figure_title", "method_color", "page_html", "shared_scales", "submodule_rows", "write_html",
           "write_page"]

