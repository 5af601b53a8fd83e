"""Dictionary loading in the dictionary_learning layout, with checks against the model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_dictionaries, tiny_model

import featurecircuits as fc


def _write(root, name, ae, folder="10_64"):
    return fc.save_dictionary(ae, root / name / folder)


def test_round_trip_keeps_weights_exactly_without_renormalising(tmp_path):
    model = tiny_model()
    ae = random_dictionaries(model)["mlp_0"]
    with torch.no_grad():
        ae.decoder.weight.mul_(3.0)  # from_pretrained would rescale these columns to unit norm
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
    assert type(loaded["resid_1"]).__name__ == "JumpReluAutoEncoder"
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
    with pytest.raises(FileNotFoundError, match="is not a directory"):
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
