"""The organism: training works on a tiny config, artifacts load through the normal code paths, and the
shipped model meets its accuracy targets on held-out pairs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import featurecircuits as fc
from featurecircuits.models import ORGANISM_DIR
from featurecircuits.organism import train as T
from featurecircuits.organism.card import heldout_tasks, task_accuracy

TINY = T.OrganismConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=64, seq_len=16, batch_size=8, steps=20, warmup=2,
                        sae_width=64, sae_steps=5, sae_batch_seqs=4, sae_l1_per_submodule=(), sae_rescale_seqs=32)


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
    from featurecircuits.dictionaries.dictionary_learning import convert

    for name, ae in saes.items():
        for k, v in convert(ae).state_dict().items():
            assert torch.equal(loaded[name].state_dict()[k], v)
        assert torch.allclose(fc.decoder_norms(loaded[name]), torch.ones(64), atol=1e-5)


def _relative_error(ae, x, scale):
    f = ae.encode(x) * scale
    return ((x - ae.decode(f)).pow(2).sum(-1) / x.pow(2).sum(-1)).mean()


def test_shrinkage_correction_keeps_supports_and_minimises_the_relative_error():
    from dictionary_learning import AutoEncoder

    torch.manual_seed(0)
    ae = AutoEncoder(16, 12)
    with torch.no_grad():
        ae.decoder.weight.copy_(torch.linalg.qr(torch.randn(16, 12))[0])  # orthonormal features
        ae.encoder.weight.copy_(ae.decoder.weight.t() * 0.5)  # an SAE whose features are shrunk by half
        ae.encoder.bias.fill_(-0.05)
    codes = torch.rand(4000, 12).add(0.5) * (torch.rand(4000, 12) < 0.2)  # data the dictionary can express
    x = codes @ ae.decoder.weight.detach().t() * torch.rand(4000, 1).add(0.2) + 0.01 * torch.randn(4000, 16)
    with torch.no_grad():
        before_f, before = ae.encode(x), _relative_error(ae, x, 1.0)
    s = T.correct_shrinkage(ae, x)
    with torch.no_grad():
        after_f = ae.encode(x)
        assert torch.equal(after_f > 0, before_f > 0)  # nothing starts or stops firing
        assert torch.allclose(after_f, before_f * s, rtol=1e-5, atol=1e-6)
        assert _relative_error(ae, x, 1.0) < 0.3 * before  # 0.40 → 0.10
    assert (s > 1.5).all()  # the halved magnitudes grew back (a little over 2: the bias shrinks too)
    # a least-squares optimum: no small change of the per-feature scales lowers the error
    scale = torch.ones(12, requires_grad=True)
    _relative_error(ae, x, scale).backward()
    assert scale.grad.abs().max() < 1e-4


def test_sae_l1_overrides_must_name_submodules():
    tok = T.make_tokenizer()
    hf, _ = T.train_model(TINY, tok)
    with pytest.raises(ValueError, match="resid_7"):
        T.train_saes(fc.Model(hf, tok), replace(TINY, sae_l1_per_submodule=(("resid_7", 0.1),)), tok)
    with pytest.raises(ValueError, match="L1 coefficient of mlp_0 must be positive"):
        replace(TINY, sae_l1_per_submodule=(("mlp_0", 0.0),))


def test_tokenizer_is_word_level_and_round_trips():
    tok = T.make_tokenizer()
    text = "Then, Alice and Bob went to the store. Alice gave a book to"
    ids = tok.encode(text)
    assert len(ids) == 15 and tok.unk_token_id not in ids
    assert tok.decode(ids) == text


shipped = pytest.mark.organism


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
