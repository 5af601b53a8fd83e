"""Dictionaries (SAEs): one interface (:class:`Dictionary`), one loader per on-disk format, and sets of
dictionaries per submodule checked against a model."""

from .base import ACTIVATIONS, SAE, Dictionary, DictionarySource, GatedSAE, IdentityDictionary
from .sets import (
    check_dictionary,
    decoder_norms,
    download_dictionaries,
    load_dictionaries,
    load_dictionary,
    neuron_dictionaries,
    resolve_dictionaries,
    save_dictionary,
)

__all__ = ["ACTIVATIONS", "SAE", "Dictionary", "DictionarySource", "GatedSAE", "IdentityDictionary",
           "check_dictionary", "decoder_norms", "download_dictionaries", "load_dictionaries", "load_dictionary",
           "neuron_dictionaries", "resolve_dictionaries", "save_dictionary"]
