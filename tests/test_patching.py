"""The activation-patching engine: copies run from their patch's layer up give the effects of running every
layer, and run only the layers above their patch."""

from __future__ import annotations

import pytest
import torch

import featurecircuits as fc
from featurecircuits.patching import Patch, both_runs, narrowed, patch_effects
from featurecircuits.splice import Splice
from tests.conftest import random_batch, random_dictionaries, tiny_model


def _assert_same_ap(fast, full):
    scale = float(full.metric_base.abs().max())
    for sub in full.submodules:
        assert torch.allclose(fast.scores[sub], full.scores[sub], atol=1e-5 * scale, rtol=0), sub
        if sub in full.error_scores:
            assert torch.allclose(fast.error_scores[sub], full.error_scores[sub], atol=1e-5 * scale, rtol=0), sub
    assert max(float(full.scores[s].abs().max()) for s in full.submodules) > 1e-3 * scale


def test_ap_from_each_patch_layer_equals_ap_through_every_layer(family):
    """Every family, over the prefix cache and without it, in one forward per position and in chunks of a few
    copies: starting each copy at its patch's layer changes AP only by float32 rounding."""
    model = tiny_model(family, layers=4)
    batch = random_batch(n=3, t=7)
    runs = [(None, {}), (None, {"reuse_prefix": False}), (None, {"max_batch": 5})]
    if family in ("gpt_neox", "llama"):  # features and error nodes too
        runs.append((random_dictionaries(model, size=16), {}))
    for dicts, options in runs:
        fast = fc.attribute(model, batch, method="ap", dictionaries=dicts, **options)
        full = fc.attribute(model, batch, method="ap", dictionaries=dicts, reuse_layers=False, **options)
        _assert_same_ap(fast, full)


@pytest.mark.parametrize("family, config", [("llama", {}), ("gemma2", {"sliding_window": 3}),
                                            ("gpt2", {})])
def test_copies_of_chosen_examples_and_positions_join_at_their_layer(family, config):
    """Patches in no particular layer order, each of its own examples (so copies are not one repeated batch)
    and some at two positions, over a prefix longer than Gemma's sliding window: the effects of running every
    layer, to float32 rounding."""
    model = tiny_model(family, layers=4, **config)
    batch = random_batch(n=4, t=9, seed=3)
    splice = Splice(model)
    cfg = fc.AttributionConfig(method="ap").resolve(model.family.name)
    runs = both_runs(model, splice, batch, fc.logit_diff, cfg)
    subs = list(reversed(model.submodules))  # highest layer first
    patches = [Patch(s.name, "act", None, positions, examples)
               for i, s in enumerate(subs)
               for positions, examples in (((5,), (i % 4, (i + 1) % 4)), ((4, 6), ((i + 2) % 4,)), ((6,), None))]
    fast = patch_effects(model, splice, batch, cfg, patches, runs=runs)
    full = patch_effects(model, splice, batch, cfg.with_(reuse_layers=False), patches, runs=runs)
    scale = float(full.effects.abs().max())
    assert scale > 1e-3 * float(runs.metric_base.abs().max())
    assert torch.allclose(fast.effects, full.effects, atol=1e-5 * scale, rtol=0)
    assert fast.row_layers < full.row_layers and fast.rows == full.rows


def test_layer_arguments_are_narrowed_only_where_they_are_per_copy():
    """Decoder layers get per-copy tensors (hidden states, a materialised mask) and shared ones (rotary tables
    and position ids with a batch dimension of 1, cache positions): only the per-copy ones are cut to the
    copies that run the layer, wherever they sit in the arguments."""
    rows, k = 6, 2
    hidden, mask = torch.randn(rows, 6, 8), torch.zeros(rows, 1, 6, 9)
    cos, ids, positions = torch.randn(1, 6, 4), torch.arange(6)[None], torch.arange(6)
    args, kwargs = narrowed((hidden,), k, rows), narrowed(
        {"attention_mask": mask, "position_embeddings": (cos, cos), "position_ids": ids, "cache_position": positions,
         "use_cache": True, "masks": [mask]}, k, rows)
    assert args[0].shape == (k, 6, 8) and torch.equal(args[0], hidden[:k])
    assert kwargs["attention_mask"].shape == (k, 1, 6, 9) and kwargs["masks"][0].shape == (k, 1, 6, 9)
    assert kwargs["position_embeddings"][0] is cos and kwargs["position_ids"] is ids
    assert kwargs["cache_position"] is positions and kwargs["use_cache"] is True


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_each_copy_runs_only_the_layers_from_its_patch_up(reuse_prefix):
    """Rows counted at each layer's MLP while the patches run: a copy enters at its patch's layer."""
    model = tiny_model("llama", layers=4)
    batch = random_batch(n=2, t=5)
    splice = Splice(model)
    cfg = fc.AttributionConfig(method="ap", reuse_prefix=reuse_prefix).resolve(model.family.name)
    runs = both_runs(model, splice, batch, fc.logit_diff, cfg)
    patches = [Patch(s.name, "act", None, (3,)) for s in model.submodules]  # embed, then attn/mlp/resid per layer
    patch_effects(model, splice, batch, cfg, patches, runs=runs)  # records the base run's hidden states once
    seen = [0] * model.n_layers
    hooks = [model.layer_module(layer, "mlp").register_forward_hook(
        lambda _m, _i, out, layer=layer: seen.__setitem__(layer, seen[layer] + out.shape[0]))
        for layer in range(model.n_layers)]
    try:
        got = patch_effects(model, splice, batch, cfg, patches, runs=runs)
    finally:
        for hook in hooks:
            hook.remove()
    firsts = [max(model.submodule(p.submodule).layer, 0) for p in patches]
    # the prefix is cut from the base run's cache, recorded by the first call with its hidden states
    assert seen == [len(batch) * sum(f <= layer for f in firsts) for layer in range(model.n_layers)]
    assert got.row_layers == len(batch) * sum(model.n_layers - f for f in firsts)
    assert got.forwards == 1 and got.rows == len(batch) * len(patches)
    full = patch_effects(model, splice, batch, cfg.with_(reuse_layers=False), patches, runs=runs)
    assert full.row_layers == len(batch) * len(patches) * model.n_layers
    assert torch.allclose(got.effects, full.effects, atol=1e-5 * float(runs.metric_base.abs().max()), rtol=0)


@pytest.mark.parametrize("family, config, forwards", [("llama", {}, 0), ("gemma2", {"sliding_window": 3}, 3)])
def test_prefix_caches_are_cut_from_one_run_where_the_cache_allows(family, config, forwards, monkeypatch):
    """Patches at three positions: the cache of the base run that records its hidden states serves all three
    prefixes (no prefix forward), unless sliding-window layers have dropped the early positions (then one prefix
    forward per position)."""
    import featurecircuits.patching as patching

    model = tiny_model(family, layers=3, **config)
    batch = random_batch(n=2, t=8, seed=4)
    splice = Splice(model)
    cfg = fc.AttributionConfig(method="ap").resolve(model.family.name)
    runs = both_runs(model, splice, batch, fc.logit_diff, cfg)
    patches = [Patch(s.name, "act", None, (t,)) for t in (4, 5, 6) for s in model.submodules]
    seen = []
    real = patching._prefix_cache
    monkeypatch.setattr(patching, "_prefix_cache", lambda m, ids: seen.append(ids.shape[1]) or real(m, ids))
    fast = patch_effects(model, splice, batch, cfg, patches, runs=runs)
    assert len(seen) == forwards
    full = patch_effects(model, splice, batch, cfg.with_(reuse_layers=False), patches, runs=runs)
    assert seen[forwards:] == [4, 5, 6]  # the every-layer path: one prefix forward per position, as before
    assert torch.allclose(fast.effects, full.effects, atol=1e-5 * float(full.effects.abs().max()), rtol=0)
