"""build_dossiers: a planted feature is found on its token, the streaming top-k equals a brute-force top-k,
samples and histograms agree with every firing, and the state does not grow with the corpus."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from featurecircuits.features import DossierConfig, TokenCorpus, build_dossiers
from featurecircuits.features.effects import final_norm_weight
from tests.conftest import random_dictionaries
from tests.features.dossier_helpers import (
    PLANTED,
    WORDS,
    all_firings,
    brute_top,
    planted_dictionary,
    random_sequences,
    word_model,
)


@pytest.fixture(scope="module")
def planted():
    model = word_model()
    dicts = {"embed": planted_dictionary(model)}
    rows = random_sequences(40, seed=3)
    return model, dicts, rows, build_dossiers(model, dicts, TokenCorpus(rows), k=5, batch_size=8, progress=False)


def test_planted_feature_peaks_on_its_token_in_every_top_context(planted):
    model, _, rows, dossiers = planted
    n_tokens = sum(len(r) for r in rows)
    counts = Counter(t for r in rows for t in r)
    for feat, token in PLANTED.items():
        card = dossiers.card("embed", feat)
        assert card["top_contexts"], f"feature {feat} never fired"
        assert len(card["top_contexts"]) == 5
        for ctx in card["top_contexts"]:
            assert ctx["token_ids"][ctx["peak"]] == token
            # the feature is active exactly where its token is, across the whole window
            assert [a > 0 for a in ctx["acts"]] == [t == token for t in ctx["token_ids"]]
        word = WORDS[token - 3]
        assert card["label"].startswith(f"‹{word}›") and card["label_source"] == "auto"
        assert card["n_active"] == counts[token] and math.isclose(card["density"], counts[token] / n_tokens)
        assert card["input_tokens"][0]["token_id"] == token  # encoder row · embeddings: its own token first
    silent = dossiers.card("embed", 4)
    assert silent["n_active"] == 0 and silent["top_contexts"] == [] and silent["label"] is None


def test_top_contexts_are_distinct_windows():
    model = word_model()
    dicts = {"embed": planted_dictionary(model)}
    row = [7, 8, 9, 10, 11]
    dossiers = build_dossiers(model, dicts, TokenCorpus([row] * 6 + [[5, 7, 8]]), k=5, context=(2, 1),
                              progress=False)
    windows = [tuple(c["token_ids"]) for c in dossiers.card("embed", 0)["top_contexts"]]
    assert sorted(windows) == [(5, 7, 8), (7, 8)]  # six copies of one sentence fill one slot


def test_streaming_top_k_equals_brute_force():
    model = word_model(seed=1)
    dicts = random_dictionaries(model, size=48, seed=2)
    rows = random_sequences(30, seed=4)
    cfg = DossierConfig(k=4, context=(3, 2), batch_size=7, seq_len=32)
    dossiers = build_dossiers(model, dicts, TokenCorpus(rows), config=cfg, progress=False)
    reference = all_firings(model, dicts, rows, *cfg.context)
    checked = 0
    for name in ("embed", "mlp_0", "resid_1"):
        for feat in range(0, 48, 5):
            firings = reference[name].get(feat, [])
            expected = brute_top(firings, cfg.k)
            card = dossiers.card(name, feat)
            left_pad = [(c["act"], (-1,) * (cfg.context[0] - c["peak"]) + tuple(c["token_ids"]))
                        for c in card["top_contexts"]]
            got = [(v, w + (-1,) * (cfg.window - len(w))) for v, w in left_pad]
            # equal up to the order of exact ties (embed features take one value per token id)
            assert torch.allclose(torch.tensor([v for v, _ in got]), torch.tensor([v for v, _ in expected]), atol=1e-5)
            strongest = {w: v for v, w in brute_top(firings, len(firings))}
            assert len({w for _, w in got}) == len(got)
            assert all(abs(strongest[w] - v) < 1e-5 for v, w in got), (name, feat)
            assert card["n_active"] == len(firings)
            assert sum(card["histogram"]["counts"]) == len(firings)
            checked += bool(firings)
    assert checked > 10


def test_samples_lie_in_their_bands_and_are_real_firings():
    model = word_model(seed=1)
    dicts = random_dictionaries(model, size=32, seed=5)
    rows = random_sequences(40, seed=6)
    dossiers = build_dossiers(model, dicts, TokenCorpus(rows), k=3, n_quantile_samples=3, n_random=5,
                              batch_size=6, seq_len=32, progress=False)
    reference = all_firings(model, dicts, rows, *dossiers.config.context)
    for name in ("attn_0", "resid_0"):
        for feat in range(0, 32, 3):
            card = dossiers.card(name, feat)
            values = [v for v, _ in reference[name].get(feat, [])]
            assert len(card["random_samples"]) == min(5, len(values))
            for band in card["quantile_samples"]:
                assert band["n_firings"] == sum(band["low"] <= v < band["high"] for v in values)
                assert len(band["examples"]) == min(3, band["n_firings"])
                for ex in band["examples"]:
                    assert band["low"] <= ex["act"] < band["high"]
            for ex in card["random_samples"] + [e for b in card["quantile_samples"] for e in b["examples"]]:
                assert any(abs(ex["act"] - v) < 1e-5 for v in values)
            if values:
                hist = card["histogram"]
                assert hist["range"][1] >= max(values) > hist["range"][1] - hist["bin_width"]
                assert math.isclose(card["act_max"], max(values), rel_tol=1e-5)


def test_state_size_does_not_depend_on_corpus_length():
    model = word_model()
    dicts = random_dictionaries(model, size=16, seed=0)
    shapes = []
    for n in (3, 60):
        dossiers = build_dossiers(model, dicts, TokenCorpus(random_sequences(n)), batch_size=4, progress=False)
        shapes.append({(s, k): tuple(v.shape) for s, st in dossiers.states.items() for k, v in st.tensors().items()})
    assert shapes[0] == shapes[1]


def test_promoted_tokens_follow_the_direct_path():
    model = word_model(seed=2)
    dicts = random_dictionaries(model, size=16, seed=1)
    dossiers = build_dossiers(model, dicts, TokenCorpus(random_sequences(5)), progress=False)
    ae = dicts["resid_1"]
    with torch.no_grad():
        logits = model.hf.get_output_embeddings().weight @ (ae.decoder_rows[3] * final_norm_weight(model))
    card = dossiers.card("resid_1", 3)
    assert [t["token_id"] for t in card["promoted"]] == logits.topk(10).indices.tolist()
    assert [t["token_id"] for t in card["suppressed"]] == (-logits).topk(10).indices.tolist()
    assert math.isclose(card["promoted"][0]["value"], float(logits.max()), rel_tol=1e-5)
    assert card["input_tokens"] is None  # only embed (and resid_0) have an input side


def test_cards_take_circuit_node_ids_and_max_tokens_limits_the_pass(planted):
    model, dicts, rows, _ = planted
    dossiers = build_dossiers(model, dicts, TokenCorpus(rows), max_tokens=100, progress=False)
    assert dossiers.metadata["n_tokens"] == 100
    cards = dossiers.cards(["embed/f1@3", "embed/f2", "embed/err", "logit", "resid_0/f1"])
    assert list(cards) == ["embed/f1@3", "embed/f2"]
    assert cards["embed/f1@3"]["node_id"] == "embed/f1"
    with pytest.raises(ValueError, match="malformed node id"):
        dossiers.cards(["embed/x1"])
    with pytest.raises(ValueError, match="unknown dossier option"):
        build_dossiers(model, dicts, TokenCorpus(rows), top=3)
    with pytest.raises(ValueError, match="multiple of n_bands"):
        DossierConfig(n_bins=30, n_bands=4)


def _held(res, group):
    """A reservoir group's entries as a sorted list of (where, value) (slots are unordered)."""
    keep = res.score[group] > float("-inf")
    return sorted(zip(res.where[group][keep].tolist(), res.value[group][keep].tolist(), strict=True))


def test_dossiers_do_not_depend_on_how_the_corpus_is_batched():
    model = word_model(seed=4)
    dicts = random_dictionaries(model, size=24, seed=6)
    dicts = {k: dicts[k] for k in ("mlp_0", "resid_1")}  # continuous activations: no exact ties
    rows = random_sequences(30, seed=9)
    a = build_dossiers(model, dicts, TokenCorpus(rows), batch_size=4, progress=False)
    b = build_dossiers(model, dicts, TokenCorpus(rows), batch_tokens=10_000, progress=False)
    for name in dicts:
        sa, sb = a.states[name], b.states[name]
        assert torch.equal(sa.count, sb.count) and torch.equal(sa.hist, sb.hist)
        assert torch.allclose(sa.act_sum, sb.act_sum)
        for g in range(sa.width):  # top-k: equal values; equal firings above the k-th (ties there are free)
            va, vb = sorted(v for _, v in _held(sa.top, g)), sorted(v for _, v in _held(sb.top, g))
            assert torch.allclose(torch.tensor(va), torch.tensor(vb))
            above = [{w for w, v in _held(s.top, g) if v > va[0] + 1e-6} for s in (sa, sb)] if va else [set(), set()]
            assert above[0] == above[1], (name, g)
        for res in ("bands", "random"):  # samples: keys hash each firing's place, so the very same firings
            ra, rb = getattr(sa, res), getattr(sb, res)
            for g in range(ra.score.shape[0]):
                assert [w for w, _ in _held(ra, g)] == [w for w, _ in _held(rb, g)], (name, res, g)


def test_sampling_keys_look_uniform_and_independent():
    from featurecircuits.features.state import sampling_keys

    where = torch.arange(100_000) << 20
    k1, k2 = sampling_keys(where, torch.arange(100_000) % 7, salt=123)
    for k in (k1, k2):
        assert 0 <= float(k.min()) and float(k.max()) < 1 and abs(float(k.mean()) - 0.5) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([k1, k2]))[0, 1])) < 0.02
    assert not torch.equal(sampling_keys(where, torch.zeros_like(where), 1)[0],
                           sampling_keys(where, torch.zeros_like(where), 2)[0])
