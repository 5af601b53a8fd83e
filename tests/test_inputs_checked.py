"""Inputs checked before work and numbers that mean something, through the API (issue 26): top-k with a node
threshold, circuits with finite numbers only, explained variance of dictionaries, scale factors, degenerate
task pairs, the model's context length."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

import featurecircuits as fc
from featurecircuits.circuit import Circuit
from featurecircuits.dictionaries import check_explained_variance, describe, explained_variance, neuron_dictionaries
from featurecircuits.dictionaries.saelens import check_scale, from_state, parse_config
from featurecircuits.scoring import select
from featurecircuits.tasks import Task, validate
from tests.conftest import random_batch, random_dictionaries, tiny_model


def test_top_k_and_a_node_threshold_are_both_applied_and_recorded():
    model = tiny_model()
    dicts = random_dictionaries(model)
    batch = random_batch()
    everything = fc.discover(model, dicts, [batch], top_k=10**9, edges=False)
    scores = sorted((abs(everything.score(n)) for n in everything.nodes), reverse=True)
    threshold = scores[len(scores) // 2]  # half the nodes are above it
    both = fc.discover(model, dicts, [batch], top_k=len(scores), node_threshold=threshold, edges=False)
    assert len(both) == sum(s >= threshold for s in scores) and all(abs(both.score(n)) >= threshold for n in both.nodes)
    assert (both.metadata["top_k"], both.metadata["node_threshold"]) == (len(scores), threshold)
    few = fc.discover(model, dicts, [batch], top_k=3, node_threshold=threshold, edges=False)
    assert few.nodes == everything.top(3) and len(few) == 3
    alone = fc.discover(model, dicts, [batch], top_k=3, edges=False)
    assert alone.metadata["node_threshold"] is None and alone.metadata["top_k"] == 3  # no threshold was applied
    assert fc.discover(model, dicts, [batch], edges=False).metadata["node_threshold"] == 0.1  # the default
    assert select({"a": 5.0, "b": -4.0, "c": 1.0}, threshold=2.0, top_k=5) == {"a": 5.0, "b": -4.0}


def test_circuits_are_written_and_read_with_finite_numbers_only(tmp_path):
    model = tiny_model()
    c = fc.discover(model, None, [random_batch()], node_threshold=0.0, edges=False)
    c.metadata["metric_base"] = math.inf
    with pytest.raises(ValueError, match=r"\$\.metadata\.metric_base is inf, and JSON holds finite numbers only"):
        c.to_json(tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()
    c.metadata["metric_base"] = 1.0
    c.graph.nodes[c.nodes[0]]["score"] = math.nan
    with pytest.raises(ValueError, match=r"\$\.nodes\[1\]\.score is nan"):
        c.to_json()
    c.graph.nodes[c.nodes[0]]["score"] = 0.5
    data = json.loads(c.to_json())
    assert Circuit.from_dict(data).score(c.nodes[0]) == 0.5
    for bad, where in (({"metadata": {**data["metadata"], "m": -math.inf}}, r"\$\.metadata\.m"),
                       ({"nodes": data["nodes"][:1] + [{**data["nodes"][1], "x": [1.0, math.nan]}]},
                        r"\$\.nodes\[1\]\.x\[1\]")):
        with pytest.raises(ValueError, match=where + ": must be a finite number"):
            Circuit.from_dict({**data, **bad})


def test_duplicate_and_self_loop_edges_are_refused():
    node = {"id": "resid_0/f1", "score": 1.0}
    base = {"schema": "featurecircuits.circuit", "version": 1, "metadata": {},
            "nodes": [{"id": "logit", "score": 0.0}, node, {"id": "mlp_0/err", "score": 0.5}]}
    edge = {"source": "mlp_0/err", "target": "resid_0/f1", "weight": 0.1}
    with pytest.raises(ValueError, match=r"\$\.edges\[1\]: edge 'mlp_0/err' → 'resid_0/f1' is listed twice"):
        Circuit.from_dict({**base, "edges": [edge, {**edge, "weight": 9.0}]})
    with pytest.raises(ValueError, match=r"\$\.edges\[0\]: edge from 'resid_0/f1' to itself"):
        Circuit.from_dict({**base, "edges": [{"source": "resid_0/f1", "target": "resid_0/f1", "weight": 1.0}]})


def test_explained_variance_flags_random_dictionaries_by_name(caplog):
    model = tiny_model()
    ids = random_batch(n=4, t=8).clean
    exact = explained_variance(model, neuron_dictionaries(model), ids)
    assert all(v == pytest.approx(1.0) for v in exact.values())
    with caplog.at_level(logging.WARNING):
        values = check_explained_variance(model, random_dictionaries(model), ids, where="test prompts")
    assert values and all(v < 0.5 for v in values.values())
    assert caplog.text.count("explain less than 50%") == 1 and "on test prompts: embed -" in caplog.text
    assert check_explained_variance(model, neuron_dictionaries(model), ids) == {}  # exact, so not checked


def test_a_partial_set_is_described_compactly():
    model = tiny_model()
    dicts = random_dictionaries(model)
    full = describe(dicts, model)
    assert "without" not in full
    partial = describe({k: v for k, v in dicts.items() if not k.startswith("mlp")}, model)
    assert partial.endswith("; without (no nodes): every mlp")


@pytest.mark.parametrize("value", [math.nan, math.inf, 0, -2.0, "1.5", True])
def test_scale_factors_must_be_finite_and_positive(value):
    with pytest.raises(ValueError, match=f"cfg.json: norm_scaling_factor is {value!r}; a scale factor must be"):
        parse_config({"norm_scaling_factor": value, "normalize_activations": "expected_average_only_in",
                      "hook_name": "blocks.0.hook_resid_post"}, "sae/cfg.json")
    assert check_scale(2, "x", "k") == 2.0 and check_scale(None, "x", "k") is None


def test_a_zero_scaling_factor_tensor_is_refused():
    cfg = parse_config({"hook_name": "blocks.0.hook_resid_post", "finetuning_scaling_factor": True})
    state = {"W_enc": torch.randn(8, 4), "b_enc": torch.zeros(4), "W_dec": torch.randn(4, 8), "b_dec": torch.zeros(8),
             "scaling_factor": torch.tensor([1.0, 0.0, 2.0, 1.0])}
    with pytest.raises(ValueError, match="w.safetensors: tensor 'scaling_factor' holds 1 zero"):
        from_state(cfg, state, "w.safetensors")


def test_degenerate_pairs_are_refused_with_the_tokens():
    model = fc.load_model(tiny_model().hf, tokenizer=_WordTokenizer())
    good = {"clean_prefix": "a b c", "patch_prefix": "a d c", "clean_answer": " e", "patch_answer": " f"}
    validate(Task("t", [good]), model.tokenizer, context=3)
    cases = [({"patch_answer": "e"}, "are the same token"), ({"patch_prefix": "a  b c"}, "are the same tokens"),
             ({"clean_prefix": "a b c b", "patch_prefix": "a d c b"}, "4 tokens, more than the model's context of 3")]
    for change, message in cases:
        with pytest.raises(ValueError, match=f"t example 1: .*{message}"):
            validate(Task("t", [{**good, **change}]), model.tokenizer, source="t", context=3)


def test_the_model_says_its_context_length():
    assert tiny_model("gpt_neox").context_length == 64 and tiny_model("gpt2").context_length == 64


class _WordTokenizer:
    """Words to ids (whitespace ignored, so ``e`` and `` e`` are one token)."""

    unk_token_id = None
    words = "a b c d e f".split()

    def encode(self, text, add_special_tokens=True):
        return [self.words.index(w) for w in text.split()]

    def convert_ids_to_tokens(self, ids):
        return [self.words[i] for i in ids]
