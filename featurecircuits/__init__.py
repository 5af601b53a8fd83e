"""featurecircuits: sparse feature circuits in language models, found fast with Relevance Patching."""

from . import fileio, splice, tasks
from .attribution import METHODS, Attribution, AttributionConfig, attribute, pearson
from .circuit import Circuit, discover
from .data import Batch, logit_diff, make_batch, single_token
from .dictionaries import check_dictionary, decoder_norms, load_dictionaries, load_dictionary, save_dictionary
from .evaluation import AblationConfig, evaluate, faithfulness_curve
from .lrp import FAMILY_RULES, LRPConfig, apply_rules, default_rules
from .models import FAMILIES, Model, Submodule, load_model
from .splice import Splice
from .tasks import Task, load_task, make_task

__version__ = "0.1.0"

__all__ = [
    "fileio", "splice", "tasks",
    "AblationConfig", "Circuit", "Task", "discover", "evaluate", "faithfulness_curve", "load_task", "make_task",
    "FAMILIES", "FAMILY_RULES", "METHODS", "Attribution", "AttributionConfig", "Batch", "LRPConfig",
    "Model", "Splice", "Submodule", "apply_rules", "attribute", "check_dictionary", "decoder_norms",
    "default_rules", "load_dictionaries", "load_dictionary", "load_model", "logit_diff", "make_batch",
    "pearson", "save_dictionary", "single_token",
]
