"""Dictionary loading in the dictionary_learning layout, with checks against the model."""

from __future__ import annotations

import json

import pytest
import torch

import featurecircuits as fc
from tests.conftest import random_dictionaries, tiny_model


def _write(root, name, ae, folder="10_64"):
    return fc.save_dictionary(ae, root / name / folder)


def test_round_trip_keeps_weights_exactly_without_renormalising(tmp_path):
    model = tiny_model()
    ae = random_dictionaries(model)["mlp_0"]
    with torch.no_grad():
        ae.W_dec.mul_(3.0)  # from_pretrained would rescale these columns to unit norm
    _write(tmp_path, "mlp_out_layer0", ae)  # Sparse Feature Circuits folder name
    loaded = fc.load_dictionaries(tmp_path, model)
    assert list(loaded) == ["mlp_0"]
    for k, v in ae.state_dict().items():
        assert torch.equal(loaded["mlp_0"].state_dict()[k], v)
    assert torch.allclose(fc.decoder_norms(loaded["mlp_0"]), fc.decoder_norms(ae))
    assert (fc.decoder_norms(ae) - 1).abs().min() > 0.5  # far from unit norm, and kept so


def test_config_names_the_class_and_safetensors_loads(tmp_path):
    from dictionary_learning import JumpReluAutoEncoder
    from safetensors.torch import save_file

    ae = JumpReluAutoEncoder(32, 16)
    folder = tmp_path / "resid_1" / "jr"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(folder / "ae.safetensors"))
    loaded = fc.load_dictionaries(tmp_path, tiny_model())
    assert loaded["resid_1"].activation == "jumprelu" and loaded["resid_1"].source.format == "dictionary_learning"
    x = torch.randn(3, 32)
    assert torch.allclose(loaded["resid_1"].encode(x), ae.encode(x), atol=1e-6)
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "NoSuchSAE"}}))
    with pytest.raises(ValueError, match="unknown dict_class 'NoSuchSAE'"):
        fc.load_dictionary(folder)


def test_width_mismatch_names_both_widths(tmp_path):
    from dictionary_learning import AutoEncoder

    ae = AutoEncoder(48, 64)
    ae.activation_dim, ae.dict_size = 48, 64
    _write(tmp_path, "embed", ae)
    with pytest.raises(ValueError, match="width 48, but the model's width is 32"):
        fc.load_dictionaries(tmp_path, tiny_model())


def test_missing_files_and_folders(tmp_path):
    model = tiny_model()
    with pytest.raises(FileNotFoundError, match="not a folder"):
        fc.load_dictionaries(tmp_path / "nope", model)
    with pytest.raises(FileNotFoundError, match="no dictionary folders"):
        fc.load_dictionaries(tmp_path, model)
    _write(tmp_path, "embed", random_dictionaries(model)["embed"])
    with pytest.raises(FileNotFoundError, match=r"no dictionary for attn_1 .*attn_out_layer1"):
        fc.load_dictionaries(tmp_path, model, submodules=["embed", "attn_1"])
    with pytest.raises(ValueError, match="unknown submodule 'blocks.0'"):
        fc.load_dictionaries(tmp_path, model, submodules=["blocks.0"])
    (tmp_path / "mlp_0" / "x").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no dictionary weights"):
        fc.load_dictionary(tmp_path / "mlp_0" / "x")


def test_dtype_mismatch_is_reported():
    model = tiny_model()
    ae = random_dictionaries(model)["embed"].to(torch.float64)
    with pytest.raises(ValueError, match="float64 but the model is torch.float32"):
        fc.check_dictionary(ae, model, "embed")


def _sfc_zip(path, model, width):
    """A zip in the published layout: dictionaries/pythia-70m-deduped/<sfc name>/10_<width>/ae.pt."""
    import zipfile

    from featurecircuits.models import sfc_name

    staging = path.parent / "staging"
    for sub in model.submodules:
        ae = random_dictionaries(model, size=width)[sub.name] if width < 1000 else _wide(model, width)
        fc.save_dictionary(ae, staging / "dictionaries" / "pythia-70m-deduped" / sfc_name(sub) / f"10_{width}")
    with zipfile.ZipFile(path, "w") as zf:
        for f in staging.rglob("*"):
            if f.is_file():
                zf.write(f, f.relative_to(staging))
    return path


def _wide(model, width):
    from dictionary_learning import AutoEncoder

    ae = AutoEncoder(model.d_model, width)
    ae.activation_dim, ae.dict_size = model.d_model, width
    return ae.eval().requires_grad_(False)


def test_download_unpacks_the_published_layout(tmp_path, monkeypatch):
    import huggingface_hub

    from featurecircuits import dictionaries as D

    model = tiny_model()
    archive = _sfc_zip(tmp_path / "dl.zip", model, 64)
    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        return str(archive)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    root = D.download_dictionaries("pythia-70m-deduped", tmp_path / "out")
    assert calls == [("saprmarks/pythia-70m-deduped-saes", "dictionaries_pythia-70m-deduped_10.zip")]
    assert root == tmp_path / "out" / "pythia-70m-deduped"
    assert (root / "resid_out_layer1" / "10_64" / "ae.pt").is_file()
    loaded = fc.load_dictionaries(root, model)
    assert list(loaded) == [s.name for s in model.submodules]


def test_pythia70m_shaped_model_with_published_format_dictionaries(tmp_path):
    """Pythia-70M's shape, random weights, width-32768 dictionaries in the exact published layout
    (three submodules, to keep the test's disk use modest)."""
    import transformers as tr

    cfg = tr.GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                           intermediate_size=2048, rotary_pct=0.25, use_parallel_residual=True)
    model = fc.load_model(tr.GPTNeoXForCausalLM(cfg))
    root = tmp_path / "pythia-70m-deduped"
    for name in ("embed", "attn_out_layer3", "resid_out_layer5"):
        fc.save_dictionary(_wide(model, 32768), root / name / "10_32768")
    dicts = fc.load_dictionaries(root, model)
    assert list(dicts) == ["embed", "attn_3", "resid_5"]
    assert all(d.width == 32768 for d in dicts.values())
    batch = fc.Batch(torch.randint(0, 50304, (2, 6)), torch.randint(0, 50304, (2, 6)),
                     torch.tensor([1, 2]), torch.tensor([3, 4]))
    res = fc.attribute(model, batch, method="relp", dictionaries=dicts)
    assert res.scores["resid_5"].shape == (2, 6, 32768)
    # features + error add up to the estimate for the whole output, Δx · c (the decoder is linear)
    delta, coef = res.deltas["resid_5"], res.coefficients["resid_5"]
    dx = delta["err"] + delta["act"] @ dicts["resid_5"].decoder_rows
    assert torch.allclose(res.node_totals("resid_5"), (dx * coef["err"]).sum((1, 2)), rtol=1e-4, atol=1e-4)
