"""Feature cards: one feature's dossier as a JSON-able dict (what pages, exports and labels read).

A card holds ``node_id``, ``submodule``, ``feature``; ``density`` (firings per token), ``n_active``,
``n_tokens``, ``act_max``/``act_min``/``act_mean`` (over firings); ``histogram`` (``counts`` of equal bins
of ``bin_width`` from 0, cut after the bin holding the maximum); ``top_contexts``, ``quantile_samples``
(per activation band, highest first: ``name``, ``low``, ``high``, ``n_firings``, ``examples``) and
``random_samples``, each context ``{tokens, token_ids, acts, peak, act, row, position, repeated}`` (tokens
outside the sequence dropped, ``peak`` the index of the firing token, ``repeated`` when the same window was
shown earlier in the card); ``promoted``/``suppressed``/``input_tokens`` (``{token, token_id, value}``, see
:mod:`.effects`; None when the dossier has no model attached); the ``corpus`` record and
``corpus_is_task_prompts``; ``label``/``label_source`` and every known label under ``labels``.
"""

from __future__ import annotations

from .reservoir import Reservoir
from .state import POSITION_BITS, FeatureState

__all__ = ["context_entries", "feature_card", "histogram", "token_strings"]


def token_strings(tokenizer, ids: list[int], cache: dict | None = None) -> list[str]:
    """Each id decoded on its own (``⟨id⟩`` without a tokenizer)."""
    cache = {} if cache is None else cache
    out = []
    for i in ids:
        if i not in cache:
            cache[i] = tokenizer.decode([i]) if tokenizer is not None else f"⟨{i}⟩"
        out.append(cache[i])
    return out


def context_entries(res: Reservoir, group: int, tokenizer, *, left: int, seen: set,
                    cache: dict | None = None) -> list[dict]:
    """The held entries of one reservoir group as contexts, strongest first (ties: slot order); the firing
    token is at index ``left`` of each stored window."""
    held = (res.score[group] > float("-inf")).nonzero().squeeze(1).tolist()
    held.sort(key=lambda j: -float(res.value[group, j]))
    out = []
    for j in held:
        tokens = res.tokens[group, j].tolist()
        inside = [i for i, t in enumerate(tokens) if t >= 0]
        lo, hi = inside[0], inside[-1] + 1
        ids = tokens[lo:hi]
        where = int(res.where[group, j])
        peak = left - lo
        window = tuple(ids)
        out.append({"tokens": token_strings(tokenizer, ids, cache), "token_ids": ids,
                    "acts": [round(float(a), 6) for a in res.acts[group, j, lo:hi]], "peak": peak,
                    "act": float(res.value[group, j]), "row": where >> POSITION_BITS,
                    "position": where & ((1 << POSITION_BITS) - 1), "repeated": window in seen})
        seen.add(window)
    return out


def histogram(state: FeatureState, feature: int) -> dict:
    """The feature's histogram of firing activations: equal bins from 0, cut after the maximum's bin."""
    count = int(state.count[feature])
    if not count:
        return {"counts": [], "bin_width": 0.0, "range": [0.0, 0.0]}
    width = 2.0 ** int(state.exp[feature])
    n = min(state.n_bins, int(float(state.act_max[feature]) // width) + 1)
    return {"counts": state.hist[feature, :n].tolist(), "bin_width": width, "range": [0.0, n * width]}


def _bands(state: FeatureState, feature: int, tokenizer, left: int, seen: set, cache: dict) -> list[dict]:
    if not int(state.count[feature]) or not state.bands.m:
        return []
    top = state.n_bins * 2.0 ** int(state.exp[feature])
    per_band = state.n_bins // state.n_bands
    out = []
    for band in reversed(range(state.n_bands)):
        n = int(state.hist[feature, band * per_band:(band + 1) * per_band].sum())
        if not n:
            continue
        low, high = band * top / state.n_bands, (band + 1) * top / state.n_bands
        examples = context_entries(state.bands, feature * state.n_bands + band, tokenizer, left=left,
                                   seen=seen, cache=cache)
        out.append({"name": f"Interval {band}: activations {low:.3g}–{high:.3g}", "low": low, "high": high,
                    "n_firings": n, "examples": examples})
    return out


def feature_card(state: FeatureState, submodule: str, feature: int, *, tokenizer, left: int, n_tokens: int,
                 corpus: dict, effects: dict | None = None) -> dict:
    """The card of one feature (labels are added by :class:`~featurecircuits.features.Dossiers`)."""
    if not 0 <= feature < state.width:
        raise ValueError(f"feature {feature} is out of range for {submodule}, whose dictionary has "
                         f"{state.width} features")
    count = int(state.count[feature])
    seen: set = set()
    cache: dict = {}
    top = context_entries(state.top, feature, tokenizer, left=left, seen=seen, cache=cache)
    card = {
        "node_id": f"{submodule}/f{feature}", "submodule": submodule, "feature": feature,
        "density": count / n_tokens if n_tokens else 0.0, "n_active": count, "n_tokens": n_tokens,
        "act_max": float(state.act_max[feature]) if count else 0.0,
        "act_min": float(state.act_min[feature]) if count else 0.0,
        "act_mean": float(state.act_sum[feature]) / count if count else 0.0,
        "histogram": histogram(state, feature), "top_contexts": top,
        "quantile_samples": _bands(state, feature, tokenizer, left, seen, cache),
        "random_samples": context_entries(state.random, feature, tokenizer, left=left, seen=seen, cache=cache),
        "corpus": corpus, "corpus_is_task_prompts": bool(corpus.get("task_prompts")),
    }
    for side in ("promoted", "suppressed", "input_tokens"):
        values = (effects or {}).get(side)
        card[side] = None if values is None else [
            {"token": tok, "token_id": i, "value": v}
            for tok, (i, v) in zip(token_strings(tokenizer, [i for i, _ in values], cache), values, strict=True)]
    return card
