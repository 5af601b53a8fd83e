"""featurecircuits: sparse feature circuits in language models, found fast with Relevance Patching.

The public API is imported lazily (PEP 562): ``import featurecircuits`` and its torch-free modules
(``registry``, ``config``, ``words``) load without torch, so the command line answers ``--help`` at once.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name → module that defines it
_API = {
    "Attribution": "attribution", "attribute": "attribution", "pearson": "attribution",
    "Circuit": "circuit", "discover": "circuit",
    "AblationConfig": "config", "AttributionConfig": "config", "LRPConfig": "config",
    "Batch": "data", "logit_diff": "data", "make_batch": "data", "single_token": "data",
    "SAE": "dictionaries", "Dictionary": "dictionaries", "DictionarySource": "dictionaries", "GatedSAE": "dictionaries",
    "IdentityDictionary": "dictionaries", "check_dictionary": "dictionaries", "decoder_norms": "dictionaries",
    "load_dictionaries": "dictionaries", "load_dictionary": "dictionaries", "save_dictionary": "dictionaries",
    "evaluate": "evaluation", "faithfulness_curve": "evaluation",
    "FAMILY_RULES": "lrp", "apply_rules": "lrp", "default_rules": "lrp",
    "Model": "models", "Submodule": "models", "load_model": "models",
    "FAMILIES": "registry", "METHODS": "registry",
    "Splice": "splice",
    "Task": "tasks", "load_task": "tasks", "make_task": "tasks",
    "compare_features": "fidelity", "verify_circuit": "fidelity",
    "build_dossiers": "features", "open_corpus": "features", "read_labels": "features",
}
_MODULES = ("fileio", "registry", "splice", "tasks", "models", "dictionaries", "config", "scoring", "evaluation",
            "circuit", "attribution", "edges", "lrp", "data", "compare", "plots", "export", "words", "plan", "paths",
            "nodes", "sparse", "fidelity", "features", "splits", "positions", "patching")

__all__ = sorted({*_API, "fileio", "registry", "splice", "tasks"})


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'featurecircuits' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_API, *_MODULES})
