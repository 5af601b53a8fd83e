"""AP, AtP, RelP and IG: agreements that must hold exactly, convergence, and input errors."""

from __future__ import annotations

import pytest
import torch

import featurecircuits as fc
from featurecircuits.splice import Splice, run
from tests.conftest import linear_gpt_neox, random_batch, random_dictionaries, tiny_model

METHODS = ["ap", "atp", "relp", "ig"]


def _close(a, b, scale):
    return torch.allclose(a, b, atol=1e-4 * scale, rtol=1e-4)


def test_splice_is_exact(family):
    model = tiny_model(family)
    ids = random_batch().clean
    splice = Splice(model, random_dictionaries(model))
    with torch.no_grad():
        plain = model.hf(input_ids=ids).logits
        spliced = run(model, ids, splice.leaf_edit({}), splice.submodules)
    assert torch.equal(plain, spliced)


def test_splice_without_error_term_changes_logits():
    """Guard for the test above: the dictionaries really reconstruct imperfectly."""
    model = tiny_model()
    dicts = random_dictionaries(model)
    splice = Splice(model, dicts, ["mlp_0"])
    ids = random_batch().clean
    with torch.no_grad():
        plain = model.hf(input_ids=ids).logits
        recon = run(model, ids, lambda s, x: dicts[s.name](x), splice.submodules)
    assert not torch.allclose(plain, recon, atol=1e-3)


@pytest.mark.parametrize("level", ["component", "feature"])
def test_all_methods_agree_on_a_linear_model(level):
    model = linear_gpt_neox()
    batch = random_batch(n=3, t=5)
    dicts = random_dictionaries(model) if level == "feature" else None
    res = {m: fc.attribute(model, batch, method=m, dictionaries=dicts) for m in METHODS}
    scale = float((res["ap"].metric_source - res["ap"].metric_base).abs().max())
    for sub in res["ap"].submodules:
        for m in ("atp", "relp", "ig"):
            assert _close(res[m].scores[sub], res["ap"].scores[sub], scale), (m, sub)
            if level == "feature":
                assert _close(res[m].error_scores[sub], res["ap"].error_scores[sub], scale), (m, sub)
    # the scores are not trivially zero
    assert res["ap"].scores["resid_1"].abs().max() > 1e-3 * scale


def test_linear_model_nodes_sum_to_total_effect():
    """Completeness on a linear model: a submodule's node scores add up to patching it whole."""
    model = linear_gpt_neox()
    batch = random_batch()
    for m in ("relp", "ig"):
        res = fc.attribute(model, batch, method=m, dictionaries=random_dictionaries(model))
        total = res.metric_source - res.metric_base
        # resid_1 is the last layer: everything flows through it
        assert torch.allclose(res.node_totals("resid_1"), total, atol=1e-4)


@pytest.mark.parametrize("level", ["component", "feature"])
def test_relp_equals_atp_when_every_rule_is_the_gradient(family, level):
    model = tiny_model(family)
    batch = random_batch()
    dicts = random_dictionaries(model) if level == "feature" else None
    a = fc.attribute(model, batch, method="atp", dictionaries=dicts)
    r = fc.attribute(model, batch, method="relp", dictionaries=dicts, lrp=fc.LRPConfig.gradient())
    d = fc.attribute(model, batch, method="relp", dictionaries=dicts)
    for sub in a.submodules:
        assert torch.equal(a.scores[sub], r.scores[sub])
    assert any(not torch.allclose(a.scores[s], d.scores[s]) for s in a.submodules)


def _patch_whole(model, batch, sub_name):
    """m(clean with the submodule's whole output from the patch run) − m(clean)."""
    sub = model.submodule(sub_name)
    src = {}
    with torch.no_grad():
        run(model, batch.patch, lambda s, x: src.__setitem__(s.name, x.clone()), [sub])
        logits = run(model, batch.clean, lambda s, x: src[s.name], [sub])
        base = model.hf(input_ids=batch.clean).logits
    return fc.logit_diff(logits, batch) - fc.logit_diff(base, batch)


def test_ig_converges_to_the_total_effect_as_steps_grow():
    model = tiny_model("gpt_neox")
    batch = random_batch(n=4)
    dicts = random_dictionaries(model)
    target = _patch_whole(model, batch, "mlp_0")
    errors = {}
    for rule in ("left", "midpoint"):
        for steps in (2, 8, 32):
            res = fc.attribute(model, batch, method="ig", dictionaries=dicts, submodules=["mlp_0"],
                               ig_steps=steps, ig_rule=rule)
            errors[rule, steps] = float((res.node_totals("mlp_0") - target).abs().max())
    for rule in ("left", "midpoint"):
        assert errors[rule, 2] > errors[rule, 8] > errors[rule, 32]
    assert errors["midpoint", 32] < 1e-3 * float(target.abs().max())


def test_denoising_is_noising_of_the_swapped_pair():
    model = tiny_model()
    b = random_batch()
    swapped = fc.Batch(b.patch, b.clean, b.patch_answer, b.clean_answer)
    for m in METHODS:
        d = fc.attribute(model, b, method=m, direction="denoising")
        n = fc.attribute(model, swapped, method=m)
        assert d.direction == "denoising" and n.direction == "noising"
        for sub in d.submodules:  # the logit difference flips sign with the answers
            assert torch.allclose(d.scores[sub], -n.scores[sub], atol=1e-5), (m, sub)


def test_batched_ap_equals_one_patch_at_a_time():
    model = tiny_model()
    batch = random_batch(n=2, t=4)
    dicts = random_dictionaries(model)
    fast = fc.attribute(model, batch, method="ap", dictionaries=dicts, submodules=["attn_1"])
    slow = fc.attribute(model, batch, method="ap", dictionaries=dicts, submodules=["attn_1"], max_batch=1)
    assert torch.allclose(fast.scores["attn_1"], slow.scores["attn_1"], atol=1e-5)
    # and one feature by hand
    t, i = (fast.scores["attn_1"][0] != 0).nonzero()[0].tolist()
    ae, sub = dicts["attn_1"], model.submodule("attn_1")
    src = {}
    with torch.no_grad():
        run(model, batch.patch, lambda s, x: src.__setitem__("f", ae.encode(x)), [sub])

        def edit(s, x):
            f = ae.encode(x)
            f2 = f.clone()
            f2[:, t, i] = src["f"][:, t, i]
            return x + ae.decode(f2) - ae.decode(f)

        m = fc.logit_diff(run(model, batch.clean, edit, [sub]), batch)
    assert torch.allclose(fast.scores["attn_1"][:, t, i], m - fast.metric_base, atol=1e-5)


def test_result_shapes_at_both_levels():
    model = tiny_model("llama")
    batch = random_batch(n=2, t=5)
    res = fc.attribute(model, batch, method="relp", dictionaries=random_dictionaries(model, size=48))
    assert res.level == "feature"
    assert res.scores["mlp_1"].shape == (2, 5, 48)
    assert res.error_scores["mlp_1"].shape == (2, 5)
    assert res.position_scores("mlp_1").shape == (2, 5)
    comp = fc.attribute(model, batch, method="relp")
    assert comp.level == "component" and comp.scores["resid_0"].shape == (2, 5)
    assert len(comp.submodules) == 1 + 3 * model.n_layers


# -- bad input -----------------------------------------------------------------------------------

def test_clean_and_patch_of_different_lengths():
    with pytest.raises(ValueError, match=r"same token length: clean is \(2, 5\), patch is \(2, 6\)"):
        fc.Batch(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 6, dtype=torch.long),
                 torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_unknown_method_and_submodule():
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown method 'relpp'; valid: ap, atp, relp, ig"):
        fc.attribute(model, random_batch(), method="relpp")
    with pytest.raises(ValueError, match="unknown submodule 'mlp_9'.*valid: embed, z_0, attn_0"):
        fc.attribute(model, random_batch(), submodules=["mlp_9"])
    with pytest.raises(ValueError, match="unknown direction"):
        fc.attribute(model, random_batch(), direction="backwards")


def test_non_finite_metric():
    model = tiny_model()
    nan_metric = lambda logits, batch: fc.logit_diff(logits, batch) * float("nan")  # noqa: E731
    for m in METHODS:
        with pytest.raises(ValueError, match="metric is not finite"):
            fc.attribute(model, random_batch(), method=m, metric=nan_metric)


def test_metric_of_wrong_shape_and_out_of_vocab_tokens():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"one value per example, shape \(3,\)"):
        fc.attribute(model, random_batch(), metric=lambda logits, b: logits.sum())
    b = random_batch()
    bad = fc.Batch(b.clean + 1000, b.patch, b.clean_answer, b.patch_answer)
    with pytest.raises(ValueError, match="clean holds token ids outside the model's vocabulary"):
        fc.attribute(model, bad)


def test_feature_level_needs_a_dictionary_per_submodule():
    model = tiny_model()
    dicts = random_dictionaries(model)
    with pytest.raises(ValueError, match="no dictionary for submodule"):
        fc.attribute(model, random_batch(), dictionaries={"mlp_0": dicts["mlp_0"]}, submodules=["mlp_1"])


def test_pearson_matches_numpy():
    import numpy as np

    g = np.random.default_rng(0)
    a, b = g.normal(size=30), g.normal(size=30)
    assert abs(fc.pearson(a, b) - np.corrcoef(a, b)[0, 1]) < 1e-12
    halves = [torch.tensor(a[:10]), torch.tensor(a[10:])], [torch.tensor(b[:10]), torch.tensor(b[10:])]
    assert abs(fc.pearson(*halves) - np.corrcoef(a, b)[0, 1]) < 1e-12  # lists of tensors, as in the README
    with pytest.raises(ValueError, match="equally many values"):
        fc.pearson(a, b[:5])


def test_ig_over_the_last_layer_approaches_the_total_effect():
    """Patching the last residual stream whole is the whole patch: IG's node sum → m(patch) − m(clean)."""
    model = tiny_model("gpt_neox")
    batch = random_batch(n=4)
    dicts = random_dictionaries(model)
    errors = []
    for steps in (2, 8, 32):
        res = fc.attribute(model, batch, method="ig", dictionaries=dicts, submodules=["resid_1"], ig_steps=steps,
                           ig_rule="midpoint")
        total = res.metric_source - res.metric_base
        errors.append(float((res.node_totals("resid_1") - total).abs().max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3 * float(total.abs().max())


def test_ap_over_a_cached_prefix_equals_ap_over_the_whole_prompt(family):
    """A patch at position t changes nothing before t: running from t on over the cached prefix gives the
    same effects as running the whole prompt (to float32 rounding of the metric)."""
    model = tiny_model(family)
    batch = random_batch(n=3, t=7)
    dicts = random_dictionaries(model) if family in ("gpt_neox", "llama") else None
    fast = fc.attribute(model, batch, method="ap", dictionaries=dicts)
    full = fc.attribute(model, batch, method="ap", dictionaries=dicts, reuse_prefix=False)
    scale = float(full.metric_base.abs().max())
    for sub in full.submodules:
        assert torch.allclose(fast.scores[sub], full.scores[sub], atol=1e-5 * scale, rtol=0), sub
        if dicts:
            assert torch.allclose(fast.error_scores[sub], full.error_scores[sub], atol=1e-5 * scale, rtol=0), sub
    assert max(float(full.scores[s].abs().max()) for s in full.submodules) > 1e-3 * scale


def test_ap_skips_nodes_that_do_not_change_and_scores_them_exactly_zero(monkeypatch):
    """Before the prompts first differ every activation is the same in both runs: AP is exactly 0 there and
    no patched forward is run for it; at feature level the same holds for error nodes."""
    import featurecircuits.patching as A

    model = tiny_model()
    b = random_batch(n=2, t=6)
    patch = b.clean.clone()
    patch[:, 3:] = b.patch[:, 3:]  # the prompts agree on positions 0-2
    batch = fc.Batch(b.clean, patch, b.clean_answer, b.patch_answer)
    seen = []
    real = A._patched_metric
    monkeypatch.setattr(A, "_patched_metric", lambda *a: seen.append(a[6]) or real(*a))  # a[6]: the patches
    for dicts in (None, random_dictionaries(model)):
        seen.clear()
        res = fc.attribute(model, batch, method="ap", dictionaries=dicts)
        for sub in res.submodules:
            assert torch.count_nonzero(res.position_scores(sub)[:, :3]) == 0, sub
            assert torch.count_nonzero(res.position_scores(sub)[:, 3:]) > 0, sub
        patched_positions = {p.positions[0] for chunk in seen for p in chunk}
        assert min(patched_positions) == 3
