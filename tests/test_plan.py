"""The memory planner: its breakdown adds up, it scales as the tensors it counts do, it counts the
parameters exactly and the copies the code keeps. (Its estimate against a measured peak RSS is a
benchmark, `python -m benchmarks.plan_check`, since resident memory depends on the allocator.)"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tr

from featurecircuits.dictionaries import dictionary_widths
from featurecircuits.models import REPO_ROOT
from featurecircuits.plan import geometry, plan, submodule_names
from tests.conftest import random_batch, random_dictionaries, tiny_model

PYTHIA = tr.GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                          intermediate_size=2048, rotary_pct=0.25, use_parallel_residual=True)
GEMMA = tr.Gemma2Config(vocab_size=1000, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16)


@pytest.mark.parametrize("config", [PYTHIA, GEMMA], ids=["gpt_neox", "gemma2"])
@pytest.mark.parametrize("method", ["atp", "relp"])
def test_breakdown_adds_up_and_names_the_peak_phase(config, method):
    p = plan(config, 4096, 3, 7, method=method)
    assert p.total == sum(p.breakdown.values())
    assert p.phase_totals[p.phase] == p.total == max(p.phase_totals.values())
    assert set(p.phases) == {"backward", "scores"}
    assert all(v >= 0 for v in p.breakdown.values())
    assert p.gib == p.total / 2**30
    assert json.loads(json.dumps(p.to_dict()))["total"] == p.total
    assert "total" in p.table() and p.phase in p.table()


def test_parameters_counted_exactly_on_the_meta_device():
    for family in ("gpt_neox", "gemma2", "llama"):
        model = tiny_model(family)
        n = sum(p.numel() for p in model.hf.parameters())
        assert plan(model.config, None, 1, 1).breakdown["parameters"] == 4 * n
        assert geometry(model).n_params == n
    # Pythia-70M's published parameter count (untied embedding and unembedding)
    assert geometry(PYTHIA).n_params == 70_426_624


def test_scaling_in_batch_and_tokens():
    widths = {name: 1024 for name in submodule_names(6)}
    one = plan(PYTHIA, widths, 1, 16)
    fixed = ("parameters", "dictionaries")
    for b in (2, 5):
        p = plan(PYTHIA, widths, b, 16)
        assert p.phase == one.phase
        for key, value in p.breakdown.items():
            if key in fixed:
                assert value == one.breakdown[key]
            else:  # every per-token tensor grows linearly with the batch
                assert value == pytest.approx(b * one.breakdown[key], rel=1e-6, abs=8)
    # in tokens: features, errors and logits linearly; saved activations faster (the attention pattern)
    a16 = plan(PYTHIA, widths, 1, 16)
    a64 = plan(PYTHIA, widths, 1, 64)
    for key in ("features", "errors"):
        assert a64.breakdown[key] == pytest.approx(4 * a16.breakdown[key], rel=1e-6)
    # logits only where the metric reads them: the last position by default, every position with 0
    assert a64.breakdown["logits"] == a16.breakdown["logits"]
    every16, every64 = plan(PYTHIA, widths, 1, 16, logit_positions=0), plan(PYTHIA, widths, 1, 64, logit_positions=0)
    assert every64.breakdown["logits"] == 4 * every16.breakdown["logits"] == 64 * a64.breakdown["logits"]
    g16, g64 = plan(GEMMA, None, 1, 16), plan(GEMMA, None, 1, 64)
    assert g16.phase == g64.phase == "backward"
    assert g64.breakdown["activations"] > 4 * g16.breakdown["activations"]


def test_dictionary_weights_and_dtype():
    p = plan(PYTHIA, {"resid_0": 1000, "attn_1": (500, 256)}, 2, 3)
    assert p.breakdown["dictionaries"] == 4 * ((2 * 512 * 1000 + 1000 + 512) + (2 * 256 * 500 + 500 + 256))
    assert p.submodules == {"resid_0": 1000, "attn_1": 500}
    half = plan(PYTHIA, {"resid_0": 1000, "attn_1": (500, 256)}, 2, 3, dtype=torch.bfloat16)
    assert half.dtype == "bfloat16"
    for key, value in half.breakdown.items():  # the boolean transient is one byte per element in any dtype
        assert 2 * value == p.breakdown[key] or key == "transient"
    # one width for every submodule
    assert plan(PYTHIA, 1000, 1, 1).submodules == {name: 1000 for name in submodule_names(6)}


def test_gemma2_softcap_keeps_more_logit_copies_than_pythia():
    big = tr.Gemma2Config(**{**GEMMA.to_dict(), "vocab_size": 256000})
    plain = tr.Gemma2Config(**{**GEMMA.to_dict(), "vocab_size": 256000, "final_logit_softcapping": None})
    assert plan(big, None, 4, 8).breakdown["logits"] > plan(plain, None, 4, 8).breakdown["logits"]


def test_rejects_what_it_does_not_plan():
    with pytest.raises(ValueError, match="covers methods atp, relp"):
        plan(PYTHIA, 10, 1, 1, method="ig")
    with pytest.raises(ValueError, match="valid: float32"):
        plan(PYTHIA, 10, 1, 1, dtype="float8")
    with pytest.raises(ValueError, match="positive integers"):
        plan(PYTHIA, 10, 0, 1)
    with pytest.raises(ValueError, match="logit_positions"):
        plan(PYTHIA, 10, 1, 1, logit_positions=-1)
    with pytest.raises(TypeError, match="dict_widths"):
        plan(PYTHIA, [10], 1, 1)


def test_widths_from_dictionary_configs_and_model_configs(tmp_path):
    organism = REPO_ROOT / "dictionaries" / "organism"
    if not organism.is_dir():
        pytest.skip("organism dictionaries not built")
    widths = dictionary_widths(organism)
    assert len(widths) == 19 and widths["embed"] == (1024, 128)
    # a config.json path needs no weights
    path = tmp_path / "config.json"
    path.write_text(json.dumps(PYTHIA.to_dict()))
    assert plan(path, 32768, 10, 16).total == plan(PYTHIA, 32768, 10, 16).total
    with pytest.raises(FileNotFoundError, match="no dictionary config"):
        dictionary_widths(tmp_path)


def test_copy_count_matches_what_attribute_keeps():
    """The "scores" phase counts five dense copies per dictionary; four of them are in the result (base
    features, coefficients, deltas, scores) and the fifth is the source run's features, held until
    attribute returns. If the code stops keeping them, the planner must change with it."""
    import featurecircuits as fc

    model = tiny_model("gpt_neox")
    dicts = random_dictionaries(model, size=64)
    batch = random_batch(3, 5)
    res = fc.attribute(model, batch, method="relp", dictionaries=dicts)
    tensors = [res.scores[s] for s in res.submodules]
    for store in (res.deltas, res.coefficients, res.activations):
        tensors += [store[s]["act"] for s in res.submodules]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    kept = sum(storages.values())
    per_copy = 3 * 5 * 64 * 4 * len(res.submodules)
    assert kept == 4 * per_copy
    p = plan(model.config, {s: 64 for s in res.submodules}, 3, 5)
    assert p.phases["scores"]["features"] == 5 * per_copy
    assert p.phases["backward"]["features"] == 2 * per_copy


def test_sparse_path_counts_active_features_and_their_shared_indices():
    """With ``l0`` the features term is B·T·l0 values per copy plus one int64 index set per dictionary, as
    ``attribute(sparse=True)`` keeps them; it grows with l0, not with the width, and never exceeds the width."""
    import featurecircuits as fc

    model = tiny_model("gpt_neox")
    dicts = random_dictionaries(model, size=64)
    batch = random_batch(3, 5)
    res = fc.attribute(model, batch, method="relp", dictionaries=dicts, sparse=True)
    nnz = sum(res.activations[s]["act"]._nnz() for s in res.submodules)
    l0 = nnz / (len(res.submodules) * 3 * 5)
    p = plan(model.config, {s: 64 for s in res.submodules}, 3, 5, l0=l0)
    assert p.phases["scores"]["features"] == pytest.approx(5 * 4 * nnz + 3 * 8 * nnz, abs=len(res.submodules))
    for s in res.submodules:  # one index set shared by the stored copies
        stored = (res.scores[s], res.deltas[s]["act"], res.coefficients[s]["act"], res.activations[s]["act"])
        assert len({t._indices().data_ptr() for t in stored}) == 1
    wide = plan(PYTHIA, 32768, 10, 16, l0=100)
    assert wide.phases["scores"]["features"] == plan(PYTHIA, 1024, 10, 16, l0=100).phases["scores"]["features"]
    assert wide.total < plan(PYTHIA, 32768, 10, 16).total
    assert plan(PYTHIA, 50, 10, 16, l0=100).phases["scores"]["features"] == \
        plan(PYTHIA, 50, 10, 16, l0=50).phases["scores"]["features"]  # bounded by the width
    with pytest.raises(ValueError, match="l0 must be"):
        plan(PYTHIA, 10, 1, 1, l0=-1)


def test_a_family_without_planner_counts_is_an_error_naming_the_known_ones(monkeypatch):
    from dataclasses import replace

    from featurecircuits import registry

    monkeypatch.setitem(registry.FAMILIES, "gpt_neox", replace(registry.FAMILIES["gpt_neox"], saved={}))
    with pytest.raises(ValueError, match="unknown model family for the memory planner 'gpt_neox'; valid: gpt2, llama"):
        plan(PYTHIA, 32768, 10, 16)
