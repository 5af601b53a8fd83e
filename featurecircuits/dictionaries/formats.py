"""The dictionary formats featurecircuits reads: one entry each. Torch-free (the command line checks specs
with it before torch loads).

Each entry names its spec prefixes (``FORMAT:TARGET`` in a ``--dictionaries`` spec) and the loader module
that implements the format. A loader module provides:

- ``detect(path) -> bool``: ``path`` (a folder or file) holds one dictionary of this format;
- ``detect_set(root) -> bool``: ``root`` is a folder holding a set of them (for specs without a prefix);
- ``load(path) -> Dictionary``: one dictionary, its ``source`` recorded;
- ``load_set(part, model, *, l0, wanted) -> list[(submodule, Dictionary, where)]``: every dictionary a spec
  part names, mapped to our submodules (``wanted``: the submodule names asked for, or None for all);
- ``widths(part) -> {submodule: (width, d_in)}``: what the memory planner needs, from configs or headers
  alone (no weights read).

A loaded set is written back as a spec by :func:`featurecircuits.dictionaries.spec.spec_of`, from the
canonical spec part each dictionary records in its ``source``. Adding a format: its loader module plus one
entry in :data:`FORMATS` (``tests/extension/`` does exactly that).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class FormatInfo:
    name: str
    prefixes: tuple[str, ...]  # spec prefixes naming it (FORMAT:TARGET)
    module: str  # the loader module (see the module docstring)
    description: str
    options: tuple[str, ...] = ()  # key=value options its spec parts take


FORMATS: dict[str, FormatInfo] = {f.name: f for f in (
    FormatInfo("saelens", ("saelens",), "featurecircuits.dictionaries.saelens",
               "SAELens SAE folders (cfg.json + sae_weights.safetensors) or a SAELens release id"),
    FormatInfo("gemma_scope", ("gemma-scope-res", "gemma-scope-mlp", "gemma-scope-att"),
               "featurecircuits.dictionaries.gemma_scope",
               "Gemma Scope params.npz files in the hub layout layer_N/width_W/average_l0_X/",
               options=("l0", "width")),
    FormatInfo("dictionary_learning", ("dictionary_learning",), "featurecircuits.dictionaries.dictionary_learning",
               "dictionary_learning folders <root>/<submodule>/<run>/ae.pt (+ config.json), as Sparse Feature "
               "Circuits publishes them"),
)}


FALLBACK = "dictionary_learning"  # the layout of an unprefixed folder that no other format claims


def detection_order() -> list[FormatInfo]:
    """The formats tried on an unprefixed folder, the fallback last."""
    return [f for f in FORMATS.values() if f.name != FALLBACK] + [FORMATS[FALLBACK]]


def prefixes() -> dict[str, FormatInfo]:
    """Every spec prefix → its format."""
    return {p: f for f in FORMATS.values() for p in f.prefixes}


def loader(name: str) -> ModuleType:
    """The loader module of format ``name``."""
    if name not in FORMATS:
        raise ValueError(f"unknown dictionary format {name!r}; valid: {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name].module)
