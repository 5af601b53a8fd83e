"""Dictionaries (SAEs): one interface (:class:`Dictionary`, :mod:`.base`), one loader module per on-disk format
listed in the format table (:mod:`.formats`: dictionary_learning, SAELens, Gemma Scope; hook names mapped by
:mod:`.hooks`), the spec grammar (:mod:`.spec`), hub downloads (:mod:`.hub`), and sets of dictionaries per
submodule checked against a model (:mod:`.sets`).

Names are imported lazily (PEP 562), so :mod:`.spec` and :mod:`.formats` load without torch.
"""

from __future__ import annotations

import importlib

_API = {
    "ACTIVATIONS": "base", "SAE": "base", "Dictionary": "base", "DictionarySource": "base", "GatedSAE": "base",
    "IdentityDictionary": "base",
    "FORMATS": "formats", "FormatInfo": "formats",
    "cache_dir": "hub", "download_dictionaries": "hub", "resolve_dictionaries": "hub",
    "check_explained_variance": "quality", "explained_variance": "quality",
    "check_dictionary": "sets", "decoder_norms": "sets", "describe": "sets", "dictionary_widths": "sets",
    "load_dictionaries": "sets", "load_dictionary": "sets", "neuron_dictionaries": "sets", "save_dictionary": "sets",
    "parse_spec": "spec", "spec_of": "spec", "SpecPart": "spec",
}

__all__ = sorted(_API)


_MODULES = ("base", "formats", "hub", "sets", "spec", "hooks", "quality", "saelens", "gemma_scope",
            "dictionary_learning")


def __getattr__(name: str):
    if name in _MODULES:  # a submodule, as `featurecircuits.dictionaries.sets`
        return importlib.import_module(f".{name}", __name__)
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_API, *_MODULES})
