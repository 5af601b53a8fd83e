"""How well dictionaries reconstruct a model's activations on given prompts: the explained variance
``1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²`` of each dictionary (x̄: the mean activation over the same tokens), measured in
one forward pass. A dictionary that explains less than half of the variance leaves most of its submodule to
the error term, so a circuit found with it says little about features; :func:`check_explained_variance`
warns about such dictionaries by name (random or mismatched weights give values far below zero).

Task prompts can be short and nearly alike (``The doctor`` / ``The doctors``), leaving little variance
around the mean to explain: a trained dictionary can then score below 0.5 on it while its error is small.
So the warning needs both: less than half of the variance *and* less than half of the activations' energy
``Σ‖x‖²`` explained.
"""

from __future__ import annotations

import logging

import torch

from ..models import Model
from ..splice import Splice, run

__all__ = ["EXPLAINED_VARIANCE_FLOOR", "check_explained_variance", "explained_variance"]

log = logging.getLogger(__name__)

EXPLAINED_VARIANCE_FLOOR = 0.5
ROWS = 16  # prompts the check runs on: one small forward, a few % of a discover run at most


def explained_variance(model: Model, dictionaries: dict, input_ids: torch.Tensor, *,
                       energy: bool = False) -> dict[str, float]:
    """The explained variance of each dictionary on every token of ``input_ids`` (batch, tokens); NaN where the
    activations do not vary. ``energy``: ``1 − Σ‖x − x̂‖² / Σ‖x‖²`` instead (the error against the activations'
    size, not their spread)."""
    splice = Splice(model, dictionaries)
    sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def edit(sub, x):
        ae = splice.dictionaries[sub.name]
        x = x.detach()
        x = x.reshape(-1, x.shape[-1])
        err = (x - ae.decode(ae.encode(x))).float()
        spread = x.float() if energy else x.float() - x.float().mean(0)
        sums[sub.name] = (err.pow(2).sum(), spread.pow(2).sum())
        return None

    with torch.no_grad():
        run(model, input_ids.to(model.device), edit, splice.submodules, logits_to_keep=1)
    out = {}
    for name, (err, var) in sums.items():
        e, v = float(err), float(var)
        out[name] = 1.0 - e / v if v > 0 else float("nan")
    return out


def check_explained_variance(model: Model, dictionaries: dict | None, input_ids: torch.Tensor, *,
                             floor: float = EXPLAINED_VARIANCE_FLOOR, where: str = "these prompts") -> dict[str, float]:
    """:func:`explained_variance` on the first :data:`ROWS` prompts of ``input_ids``, with one warning naming
    every dictionary below ``floor`` in both variance and energy (see the module's docstring); identity
    dictionaries (the neuron baseline) are exact and skipped. Returns the explained variances."""
    checked = {k: d for k, d in (dictionaries or {}).items() if d.activation != "identity"}
    if not checked:
        return {}
    values = explained_variance(model, checked, input_ids[:ROWS])
    low = {k: v for k, v in values.items() if not v >= floor}
    if low:
        energies = explained_variance(model, {k: checked[k] for k in low}, input_ids[:ROWS], energy=True)
        low = {k: v for k, v in low.items() if not energies[k] >= floor}
    if low:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in low.items())
        log.warning("dictionaries that explain less than %.0f%% of their submodule's variance on %s: %s; their error "
                    "terms carry most of it, so circuits found with them say little about features (are they "
                    "trained for this model? check --dictionaries)", 100 * floor, where, shown)
    return values
