"""Fidelity of attribution at the level of features: how well AtP, RelP and IG estimate the exact effect of
patching single feature and error nodes, over every node (``compare --level feature``) and for the nodes of one
circuit (:func:`verify_circuit`). Definitions and measurements: docs/fidelity.md."""

from .comparison import FeatureComparison, compare_features
from .stats import sign_agreement, spearman, top_k_overlap
from .verify import verify_circuit

__all__ = ["FeatureComparison", "compare_features", "sign_agreement", "spearman", "top_k_overlap", "verify_circuit"]
