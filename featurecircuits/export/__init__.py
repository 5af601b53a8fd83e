"""Exports of circuits for other tools, one entry per format in :data:`FORMATS` (the ``--format`` choices).

- ``attribution-graph`` (:mod:`.attribution_graph`): one example as the graph JSON that circuit-tracer's
  local viewer serves and Neuronpedia accepts.

What a circuit records of its origin (model, dictionaries spec, task) is read by :mod:`.provenance`; one
example scored on its own by :mod:`.example`. Adding a format: a module with a function
``export(circuit, out, **options) -> Path`` plus one :class:`ExportFormat` entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExportFormat:
    name: str
    description: str
    implementation: str  # "module:function" with signature (circuit, out, **options) -> Path
    hint: str = ""  # what to do with the files (printed after an export)


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("attribution-graph", "one example as an attribution graph (circuit-tracer's viewer, Neuronpedia)",
                 "featurecircuits.export.attribution_graph:export_attribution_graph",
                 hint="graph-metadata.json beside it indexes the graphs; view them with circuit-tracer's local "
                      "server (docs/export.md)"),
)}


def export_circuit(circuit, out: str | Path, *, format: str = "attribution-graph", **options) -> Path:
    """Export ``circuit`` to ``out`` in ``format`` (one of :data:`FORMATS`)."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
    module, _, function = FORMATS[format].implementation.partition(":")
    return getattr(importlib.import_module(module), function)(circuit, out, **options)


_API = {
    "to_attribution_graph": "attribution_graph", "export_attribution_graph": "attribution_graph",
    "export_rows": "attribution_graph", "read_scores": "attribution_graph", "write_graph_files": "attribution_graph",
    "LINK_FIELDS": "attribution_graph", "METADATA_FIELDS": "attribution_graph", "NODE_FIELDS": "attribution_graph",
    "QPARAMS_FIELDS": "attribution_graph",
    "example_circuit": "example", "load_example": "example",
    "circuit_dictionaries": "provenance", "circuit_model": "provenance", "dictionaries_spec": "provenance",
    "dictionary_records": "provenance", "task_spec": "provenance",
}


def __getattr__(name: str):
    # Imported when first asked for, so that the format table loads without torch.
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
