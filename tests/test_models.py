"""Model adapters: layout per family, topology, errors."""

from __future__ import annotations

import pytest
import torch
import transformers as tr

import featurecircuits as fc
from featurecircuits.organism.tokenizer import build_word_tokenizer
from featurecircuits.splice import run
from tests.conftest import random_batch, tiny_hf, tiny_model


def test_every_family_exposes_its_submodules_in_execution_order(family):
    model = tiny_model(family)
    names = [s.name for s in model.submodules]
    assert names == ["embed", "attn_0", "mlp_0", "resid_0", "attn_1", "mlp_1", "resid_1"]
    assert model.parallel_residual == (family == "gpt_neox")
    order = []
    hooks = [model.module(s).register_forward_hook(lambda m, a, o, n=s.name: order.append(n))
             for s in model.submodules]
    with torch.no_grad():
        model.hf(input_ids=random_batch().clean)
    for h in hooks:
        h.remove()
    assert order == names
    # read and write through nnsight: zeroing the last layer's output changes the logits
    ids = random_batch().clean
    with torch.no_grad():
        zeroed = run(model, ids, lambda s, x: torch.zeros_like(x), [model.submodule("resid_1")])
        plain = model.hf(input_ids=ids).logits
    assert not torch.allclose(zeroed, plain)


def test_gpt_neox_sequential_variant_is_detected():
    cfg = tr.GPTNeoXConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, use_parallel_residual=False)
    assert not fc.load_model(tr.GPTNeoXForCausalLM(cfg)).parallel_residual


def test_unknown_architecture_lists_supported():
    cfg = tr.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, is_decoder=True)
    with pytest.raises(ValueError, match="unsupported architecture 'bert'; supported model types: gemma2"):
        fc.load_model(tr.BertLMHeadModel(cfg))


def test_sfc_names_map_to_ours():
    model = tiny_model()
    assert model.submodule("resid_out_layer1").name == "resid_1"
    assert model.submodule("attn_out_layer0").name == "attn_0"


def test_load_from_local_directory_and_missing_model(tmp_path):
    hf = tiny_hf("gpt_neox")
    hf.save_pretrained(tmp_path / "m")
    tok = build_word_tokenizer(["a"])
    tok.save_pretrained(tmp_path / "m")
    model = fc.load_model(str(tmp_path / "m"))
    assert model.config._attn_implementation == "eager"
    ids = random_batch().clean
    with torch.no_grad():
        assert torch.equal(model.hf(input_ids=ids).logits, hf(input_ids=ids).logits)
    with pytest.raises(FileNotFoundError, match="could not load model"):
        fc.load_model(str(tmp_path / "absent"))


def test_make_batch_validates_against_the_tokenizer():
    tok = build_word_tokenizer("Then , Bob and Alice went to the store . gave a book".split())  # noqa: E501
    b = fc.make_batch(tok, ["Then, Bob and Alice went to the store. Bob gave a book to"],
                      ["Then, Alice and Bob went to the store. Alice gave a book to"], [" Alice"], [" Bob"])
    assert b.clean.shape == b.patch.shape == (1, 15)
    assert tok.decode(b.clean_answer) == "Alice"
    with pytest.raises(ValueError, match=r"answer ' Alice Bob' must be a single token but is 2: \['Alice', 'Bob'\]"):
        fc.make_batch(tok, ["Bob gave"], ["Alice gave"], [" Alice Bob"], [" Bob"])
    with pytest.raises(ValueError, match="clean prompt 'Bob gave' has 2 tokens but patch prompt"):
        fc.make_batch(tok, ["Bob gave"], ["Alice and Bob gave"], [" Alice"], [" Bob"])
    with pytest.raises(ValueError, match=r"share a token length; found lengths \[2, 3\]"):
        fc.make_batch(tok, ["Bob gave", "Bob gave a"], ["Alice gave", "Alice gave a"], [" a"] * 2, [" a"] * 2)


def test_a_family_added_by_one_registry_entry(monkeypatch):
    """Mistral (not in the registry) becomes a supported family by one FamilyInfo: layout, default rules
    and the planner's counts. Its splice is exact, the LRP rules keep the forward bit-identical, RelP with
    the rules off equals AtP, and discover and the planner run."""
    from dataclasses import replace

    from featurecircuits import registry
    from featurecircuits.lrp import apply_rules
    from featurecircuits.plan import plan
    from featurecircuits.splice import Splice
    from tests.conftest import random_dictionaries

    llama = registry.FAMILIES["llama"]
    monkeypatch.setitem(registry.FAMILIES, "mistral", replace(llama, name="mistral", model_types=("mistral",),
                                                              rules_evidence="not measured (a test's family)"))
    config = tr.MistralConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = fc.load_model(tr.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval())
    assert model.family.name == "mistral"
    assert [s.name for s in model.submodules] == ["embed", "attn_0", "mlp_0", "resid_0", "attn_1", "mlp_1", "resid_1"]
    dicts = random_dictionaries(model)
    batch = random_batch()
    with torch.no_grad():
        plain = model.hf(input_ids=batch.clean).logits
        spliced = run(model, batch.clean, Splice(model, dicts).leaf_edit({}), model.submodules)
        with apply_rules(model):
            ruled = model.hf(input_ids=batch.clean).logits
    assert torch.equal(plain, spliced) and torch.equal(plain, ruled)
    atp = fc.attribute(model, batch, method="atp", dictionaries=dicts)
    relp = fc.attribute(model, batch, method="relp", dictionaries=dicts, lrp=fc.LRPConfig.gradient())
    assert all(torch.allclose(atp.scores[s], relp.scores[s], atol=1e-6) for s in atp.scores)
    assert len(fc.discover(model, dicts, [batch], top_k=10, edge_threshold=0.0)) == 10
    assert plan(config, 64, 2, 8).total > 0
