"""featurecircuits: sparse feature circuits in language models, found fast with Relevance Patching."""

from . import fileio, registry, splice, tasks
from .attribution import Attribution, attribute, pearson
from .circuit import Circuit, discover
from .config import AblationConfig, AttributionConfig, LRPConfig
from .data import Batch, logit_diff, make_batch, single_token
from .dictionaries import (
    SAE,
    Dictionary,
    DictionarySource,
    GatedSAE,
    IdentityDictionary,
    check_dictionary,
    decoder_norms,
    load_dictionaries,
    load_dictionary,
    save_dictionary,
)
from .evaluation import evaluate, faithfulness_curve
from .lrp import FAMILY_RULES, apply_rules, default_rules
from .models import Model, Submodule, load_model
from .registry import FAMILIES, METHODS
from .splice import Splice
from .tasks import Task, load_task, make_task

__version__ = "0.1.0"

__all__ = [
    "fileio", "registry", "splice", "tasks",
    "AblationConfig", "Circuit", "Task", "discover", "evaluate", "faithfulness_curve", "load_task", "make_task",
    "FAMILIES", "FAMILY_RULES", "METHODS", "Attribution", "AttributionConfig", "Batch", "LRPConfig",
    "Model", "Splice", "Submodule", "apply_rules", "attribute", "check_dictionary", "decoder_norms",
    "default_rules", "load_dictionaries", "load_dictionary", "load_model", "logit_diff", "make_batch",
    "pearson", "save_dictionary", "single_token", "SAE", "Dictionary", "DictionarySource", "GatedSAE",
    "IdentityDictionary",
]
