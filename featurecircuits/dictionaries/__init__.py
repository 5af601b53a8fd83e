"""Dictionaries (SAEs): one interface (:class:`Dictionary`), one loader per on-disk format
(:mod:`.dictionary_learning`, :mod:`.saelens`, :mod:`.gemma_scope`; hook names mapped by :mod:`.hooks`), and
sets of dictionaries per submodule checked against a model (:mod:`.sets`)."""

from .base import ACTIVATIONS, SAE, Dictionary, DictionarySource, GatedSAE, IdentityDictionary
from .sets import (
    FORMATS,
    cache_dir,
    check_dictionary,
    decoder_norms,
    describe,
    download_dictionaries,
    load_dictionaries,
    load_dictionary,
    neuron_dictionaries,
    parse_spec,
    resolve_dictionaries,
    save_dictionary,
)

__all__ = ["ACTIVATIONS", "FORMATS", "SAE", "Dictionary", "DictionarySource", "GatedSAE", "IdentityDictionary",
           "cache_dir", "check_dictionary", "decoder_norms", "describe", "download_dictionaries", "load_dictionaries",
           "load_dictionary", "neuron_dictionaries", "parse_spec", "resolve_dictionaries", "save_dictionary"]
