"""Feature dossiers: what each dictionary feature does on a corpus (top contexts, samples per activation
band, density, histogram, promoted/suppressed tokens), labels (automatic, user files, Neuronpedia) and
feature files for circuit-tracer's viewer. See :mod:`.dossier` for the streaming pass, :mod:`.state` for
what is kept per feature, :mod:`.corpus` for corpora and :mod:`.feature_files` for the viewer's format.

::

    import featurecircuits as fc
    from featurecircuits import features

    model = fc.load_model("organism")
    dicts = fc.load_dictionaries("organism", model)
    corpus = features.open_corpus(None, model.tokenizer, model_name=model.name)  # the organism's own text
    dossiers = features.cached_dossiers(model, dicts, corpus, k=10)              # built once, then from cache
    dossiers.add_labels(features.read_labels("labels.csv"))                     # user labels win over auto
    cards = dossiers.cards(circuit.nodes)                                       # "resid_3/f12@5" → card dict
    features.write_feature_files(dossiers, "graphs/", graph="graphs/ioi-0.json")
"""

from .cache import cached_dossiers, default_cache_root
from .corpus import (
    Corpus,
    HFDatasetCorpus,
    JsonlCorpus,
    OrganismCorpus,
    TextFileCorpus,
    TokenCorpus,
    open_corpus,
    task_corpus,
)
from .dossier import DossierConfig, Dossiers, build_dossiers, dossier_key
from .feature_files import feature_file, write_feature_files
from .labels import Label, auto_label, merge_labels, read_labels, read_neuronpedia, submodule_for_source

__all__ = ["Corpus", "DossierConfig", "Dossiers", "HFDatasetCorpus", "JsonlCorpus", "Label", "OrganismCorpus",
           "TextFileCorpus", "TokenCorpus", "auto_label", "build_dossiers", "cached_dossiers", "default_cache_root",
           "dossier_key", "feature_file", "merge_labels", "open_corpus", "read_labels", "read_neuronpedia",
           "submodule_for_source", "task_corpus", "write_feature_files"]
