"""The organism: training works on a tiny config, artifacts load through the normal code paths, and the
shipped model meets its accuracy targets on held-out pairs."""

from __future__ import annotations

import pytest
import torch

import featurecircuits as fc
from featurecircuits.models import ORGANISM_DIR
from featurecircuits.organism import train as T
from featurecircuits.organism.card import heldout_tasks, task_accuracy

TINY = T.OrganismConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=64, seq_len=16, batch_size=8, steps=20, warmup=2,
                        sae_width=64, sae_steps=5, sae_batch_seqs=4)


def test_twenty_training_steps_lower_the_loss():
    tok = T.make_tokenizer()
    model, losses = T.train_model(TINY, tok)
    assert len(losses) == 2 and losses[-1] < losses[0] - 0.2  # 4.64 → 4.31 with this seed


def test_saes_load_through_the_dictionary_learning_path(tmp_path):
    tok = T.make_tokenizer()
    hf, _ = T.train_model(TINY, tok)
    model = fc.Model(hf, tok)
    saes = T.train_saes(model, TINY, tok)
    assert list(saes) == [s.name for s in model.submodules]
    T.save_saes(saes, tmp_path, TINY)
    assert (tmp_path / "resid_0" / "0_64" / "ae.pt").is_file()
    loaded = fc.load_dictionaries(tmp_path, model)
    for name, ae in saes.items():
        for k, v in ae.state_dict().items():
            assert torch.equal(loaded[name].state_dict()[k], v)
        assert torch.allclose(fc.decoder_norms(loaded[name]), torch.ones(64), atol=1e-5)


def test_tokenizer_is_word_level_and_round_trips():
    tok = T.make_tokenizer()
    text = "Then, Alice and Bob went to the store. Alice gave a book to"
    ids = tok.encode(text)
    assert len(ids) == 15 and tok.unk_token_id not in ids
    assert tok.decode(ids) == text


shipped = pytest.mark.skipif(not (ORGANISM_DIR / "config.json").exists(), reason="organism not built")


@shipped
def test_shipped_organism_meets_its_targets_on_held_out_pairs():
    model = fc.load_model("organism")
    assert model.family.name == "gpt_neox" and model.parallel_residual
    for name, task in heldout_tasks(n=200, seed=1).items():  # the card's sample
        for group, r in task_accuracy(model, task).items():
            assert r["acc_clean"] >= 0.95 and r["acc_patch"] >= 0.95, (name, group, r)
            if name == "ioi":
                assert r["ld_clean"] >= 3 and r["ld_patch"] >= 3, (group, r)


@shipped
def test_shipped_organism_loads_with_plain_transformers_and_its_dictionaries_splice_exactly():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(ORGANISM_DIR)  # default (sdpa) attention
    tok = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    model = fc.load_model("organism")
    dicts = fc.load_dictionaries("organism", model)
    assert len(dicts) == 1 + 3 * model.n_layers
    ids = torch.tensor([tok.encode("The doctors that the pilot likes")])
    splice = fc.Splice(model, dicts)
    with torch.no_grad():
        ours = model.hf(input_ids=ids).logits
        spliced = fc.splice.run(model, ids, splice.leaf_edit({}), splice.submodules)
        assert torch.allclose(hf(input_ids=ids).logits, ours, atol=1e-4)
    assert torch.equal(ours, spliced)
