"""SAELens and Gemma Scope dictionaries: formats × architectures against reference arithmetic, hook mapping per
family, bad inputs (each error names the file), partial sets, and equivalence with the organism's originals."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import featurecircuits as fc
from featurecircuits.dictionaries import dictionary_learning, gemma_scope, saelens
from featurecircuits.dictionaries.hooks import submodule_for_hook
from tests.conftest import random_batch, random_dictionaries, tiny_model

D_IN, D_SAE = 32, 48


# -- reference arithmetic (SAELens's formulas, written out independently of our SAE classes) -------------------
def _tensors(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {"W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.3, "W_dec": torch.randn(D_SAE, D_IN, generator=g) * 0.3,
         "b_dec": torch.randn(D_IN, generator=g) * 0.1}
    if arch == "gated":
        t.update(b_gate=torch.randn(D_SAE, generator=g) * 0.2, b_mag=torch.randn(D_SAE, generator=g) * 0.2,
                 r_mag=torch.randn(D_SAE, generator=g) * 0.1)
    else:
        t["b_enc"] = torch.randn(D_SAE, generator=g) * 0.2
    if arch == "jumprelu":
        t["threshold"] = torch.rand(D_SAE, generator=g) * 0.3
    return t


def _ref(arch, t, x, *, apply_b_dec=True, k=None, rescale=False):
    sae_in = x - t["b_dec"] * apply_b_dec
    if arch == "gated":
        gate = (sae_in @ t["W_enc"] + t["b_gate"] > 0).float()
        f = gate * torch.relu(sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
        return f, f @ t["W_dec"] + t["b_dec"]
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    if arch == "standard":
        f = torch.relu(pre)
    elif arch == "jumprelu":
        f = torch.relu(pre) * (pre > t["threshold"]).float()
    else:  # topk: top k of the pre-activations, then ReLU
        norms = t["W_dec"].norm(dim=-1)
        if rescale:
            pre = pre * norms
        v, i = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, i, v.relu())
        return f, ((f / norms) if rescale else f) @ t["W_dec"] + t["b_dec"]
    return f, f @ t["W_dec"] + t["b_dec"]


def _write_saelens(folder, t, cfg: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in t.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _v6(arch, hook="blocks.0.hook_resid_post", **fields):
    return {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"model_name": "tiny", "hook_name": hook, "hook_head_index": None,
                         "sae_lens_version": "6.0.0"}, **fields}


CASES = [  # (architecture, cfg fields, reference options)
    ("standard", {}, {}),
    ("standard", {"apply_b_dec_to_input": False}, {"apply_b_dec": False}),
    ("jumprelu", {"apply_b_dec_to_input": False}, {"apply_b_dec": False}),
    ("topk", {"k": 5}, {"k": 5}),
    ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}, {"k": 5, "rescale": True}),
    ("gated", {}, {}),
]


@pytest.mark.parametrize("arch,fields,opts", CASES, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(CASES)])
def test_saelens_architectures_match_the_reference(tmp_path, arch, fields, opts):
    t = _tensors(arch)
    _write_saelens(tmp_path / "sae", t, _v6(arch, **fields))
    ae = saelens.load(tmp_path / "sae")
    assert ae.source.format == "saelens" and ae.hook_name == "blocks.0.hook_resid_post"
    x = torch.randn(4, 7, D_IN, generator=torch.Generator().manual_seed(3))
    f_ref, out_ref = _ref(arch, t, x, **opts)
    f = ae.encode(x)
    assert (f > 0).sum() > 0
    torch.testing.assert_close(f, f_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ae.decode(f), out_ref, atol=1e-5, rtol=1e-5)


def test_older_saelens_configs_and_log_threshold(tmp_path):
    # pre-6 layout: top-level hook_point / hook_point_layer, activation_fn_str topk with activation_fn_kwargs.k
    t = _tensors("topk")
    old = {"d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.1.hook_resid_pre", "hook_point_layer": 1,
           "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4}, "apply_b_dec_to_input": True,
           "normalize_activations": False, "model_name": "tiny"}
    _write_saelens(tmp_path / "old", t, old)
    ae = saelens.load(tmp_path / "old")
    assert ae.activation == "topk" and ae.k == 4 and ae.hook_name == "blocks.1.hook_resid_pre"
    x = torch.randn(5, D_IN)
    torch.testing.assert_close(ae.encode(x), _ref("topk", t, x, k=4)[0])
    assert submodule_for_hook(ae.hook_name, tiny_model()) == "resid_0"  # resid_pre of L+1 = resid_post of L
    # a v5 flat config with hook_name / hook_layer and a JumpReLU stored as log_threshold
    t = _tensors("jumprelu")
    stored = {**t, "log_threshold": t["threshold"].log()}
    del stored["threshold"]
    _write_saelens(tmp_path / "v5", stored, {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE,
                                             "hook_name": "blocks.0.hook_mlp_out", "hook_layer": 0,
                                             "apply_b_dec_to_input": False, "sae_lens_version": "5.3.0"})
    ae = saelens.load(tmp_path / "v5")
    x = torch.randn(5, D_IN)
    torch.testing.assert_close(ae.encode(x), _ref("jumprelu", t, x, apply_b_dec=False)[0], atol=1e-5, rtol=1e-5)
    assert submodule_for_hook(ae.hook_name, tiny_model()) == "mlp_0"


def test_finetuning_scaling_factor_is_folded_into_the_decoder(tmp_path):
    t = _tensors("standard")
    s = torch.rand(D_SAE) + 0.5
    _write_saelens(tmp_path / "s", {**t, "scaling_factor": s}, _v6("standard", finetuning_scaling_factor=True))
    ae = saelens.load(tmp_path / "s")
    x = torch.randn(3, D_IN)
    f, _ = _ref("standard", t, x)
    torch.testing.assert_close(ae.decode(ae.encode(x)), (f * s) @ t["W_dec"] + t["b_dec"], atol=1e-5, rtol=1e-5)


def test_normalize_activations(tmp_path):
    t = _tensors("standard")
    _write_saelens(tmp_path / "avg", t, _v6("standard", normalize_activations="expected_average_only_in"))
    with pytest.raises(ValueError, match=r"avg.*expected_average_only_in.*norm_scaling_factor"):
        saelens.load(tmp_path / "avg")
    ae = saelens.load(tmp_path / "avg", norm_scaling_factor=2.5)  # SAELens: sae(x·s)/s, folded
    x = torch.randn(3, D_IN)
    torch.testing.assert_close(ae.decode(ae.encode(x)), _ref("standard", t, x * 2.5)[1] / 2.5, atol=1e-5, rtol=1e-5)
    for value in ("constant_norm_rescale", "layer_norm", "covariance_whitening", "bogus"):
        _write_saelens(tmp_path / value, t, _v6("standard", normalize_activations=value))
        with pytest.raises(ValueError, match=rf"{value}.*cfg.json: normalize_activations '{value}' is not supported"):
            saelens.load(tmp_path / value)


# -- bad inputs: each error names the file ---------------------------------------------------------------------
def _bad_saelens(tmp_path, name, *, tensors=None, cfg=None, raw_weights=None, raw_cfg=None):
    folder = tmp_path / name
    t = _tensors("standard") if tensors is None else tensors
    _write_saelens(folder, t, _v6("standard") if cfg is None else cfg)
    if raw_weights is not None:
        (folder / "sae_weights.safetensors").write_bytes(raw_weights)
    if raw_cfg is not None:
        (folder / "cfg.json").write_text(raw_cfg)
    return folder


def test_saelens_bad_inputs_name_the_file(tmp_path):
    good = _bad_saelens(tmp_path, "good")
    data = (good / "sae_weights.safetensors").read_bytes()
    cases = [
        (_bad_saelens(tmp_path, "empty", raw_weights=b""), ValueError, r"empty.*sae_weights.safetensors.*empty"),
        (_bad_saelens(tmp_path, "trunc", raw_weights=data[: len(data) // 2]), ValueError,
         r"trunc.*sae_weights.safetensors: not a readable safetensors file.*truncated or corrupt"),
        (_bad_saelens(tmp_path, "badjson", raw_cfg="{not json"), ValueError, r"badjson.*cfg.json.*not valid JSON"),
        (_bad_saelens(tmp_path, "list", raw_cfg="[1, 2]"), ValueError, r"list.*cfg.json.*JSON list"),
        (_bad_saelens(tmp_path, "shape", tensors={**_tensors("standard"), "W_dec": torch.zeros(D_SAE, D_IN + 1)}),
         ValueError, r"shape.*'W_dec' has shape \(48, 33\), expected \(48, 32\)"),
        (_bad_saelens(tmp_path, "nan", tensors={**_tensors("standard"), "b_enc": torch.full((D_SAE,), float("nan"))}),
         ValueError, r"nan.*'b_enc' holds 48 NaN/inf"),
        (_bad_saelens(tmp_path, "inf", tensors={**_tensors("standard"),
                                                "W_enc": torch.full((D_IN, D_SAE), float("inf"))}),
         ValueError, r"inf.*'W_enc' holds .* NaN/inf"),
        (_bad_saelens(tmp_path, "arch", cfg=_v6("matryoshka_batchtopk")), ValueError,
         r"arch.*architecture 'matryoshka_batchtopk' is not supported.*standard, jumprelu, topk, gated"),
        (_bad_saelens(tmp_path, "missing", tensors={k: v for k, v in _tensors("standard").items() if k != "b_enc"}),
         ValueError, r"missing.*needs tensor\(s\) b_enc"),
        (_bad_saelens(tmp_path, "cfgdin", cfg={**_v6("standard"), "d_in": 64}), ValueError,
         r"cfgdin.*d_in = 64, but W_enc has shape \(32, 48\)"),
        (_bad_saelens(tmp_path, "nok", cfg=_v6("topk")), ValueError, r"nok.*topk SAE needs k"),
        (_bad_saelens(tmp_path, "head", cfg={**_v6("standard"), "metadata": {"hook_name": "blocks.0.attn.hook_z",
                                                                             "hook_head_index": 2}}),
         ValueError, r"head.*single attention head"),
    ]
    for folder, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            saelens.load(folder)
    (good / "cfg.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"good/cfg.json: missing"):
        saelens.load(good)
    gone = _bad_saelens(tmp_path, "noweights")
    (gone / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"noweights/sae_weights.safetensors: missing"):
        saelens.load(gone)


def test_dictionary_learning_bad_inputs_name_the_file(tmp_path):
    model = tiny_model()
    ae = random_dictionaries(model)["resid_0"]
    folder = fc.save_dictionary(ae, tmp_path / "ok" / "resid_0" / "10_64")
    data = (folder / "ae.pt").read_bytes()

    def variant(name, *, weights=None, config=None):
        f = fc.save_dictionary(ae, tmp_path / name / "resid_0" / "10_64")
        if weights is not None:
            (f / "ae.pt").write_bytes(weights)
        if config is not None:
            (f / "config.json").write_text(config)
        return tmp_path / name

    cases = [
        (variant("empty", weights=b""), r"empty.*ae.pt: the weight file is empty"),
        (variant("trunc", weights=data[: len(data) // 2]), r"trunc.*ae.pt: not a readable PyTorch state dict"),
        (variant("garbage", weights=b"hello world" * 10), r"garbage.*ae.pt: not a readable PyTorch state dict"),
        (variant("badjson", config="{"), r"badjson.*config.json.*not valid JSON"),
        (variant("trainer", config='{"trainer": 3}'), r"trainer.*config.json: 'trainer' should be an object"),
        (variant("dims", config='{"trainer": {"dict_class": "AutoEncoder", "dict_size": 99}}'),
         r"dims.*trainer.dict_size is 99 but the weights in ae.pt have 64"),
        (variant("cls", config='{"trainer": {"dict_class": "Nope"}}'), r"cls.*config.json: unknown dict_class 'Nope'"),
    ]
    for root, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            fc.load_dictionaries(root, model)
    nan = random_dictionaries(model)["resid_0"]
    with torch.no_grad():
        nan.W_dec[0, 0] = float("nan")
    fc.save_dictionary(nan, tmp_path / "nan" / "resid_0" / "x")
    with pytest.raises(ValueError, match=r"nan/resid_0/x/ae.pt: tensor 'decoder.weight' holds 1 NaN/inf"):
        fc.load_dictionaries(tmp_path / "nan", model)
    torch.save({"encoder.weight": torch.zeros(64, 32)}, tmp_path / "ok" / "resid_0" / "10_64" / "ae.pt")
    with pytest.raises(ValueError, match=r"ok/resid_0/10_64/ae.pt: weights do not fit AutoEncoder"):
        fc.load_dictionaries(tmp_path / "ok", model)


def test_gemma_scope_bad_inputs_name_the_file(tmp_path):
    t = _gs_tensors()
    path = tmp_path / "p" / "params.npz"
    with pytest.raises(FileNotFoundError, match=r"p/params.npz: missing"):
        gemma_scope.load(path)
    path.parent.mkdir()
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"p/params.npz: the weight file is empty"):
        gemma_scope.load(path)
    np.savez(path, **{k: v.numpy() for k, v in t.items()})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"p/params.npz: not a readable .npz file"):
        gemma_scope.load(path)
    for name, bad, pattern in (
        ("shape", {**t, "W_dec": np.zeros((D_SAE, D_IN + 1), np.float32)}, r"'W_dec' has shape \(48, 33\)"),
        ("nan", {**t, "threshold": np.full(D_SAE, np.nan, np.float32)}, r"'threshold' holds 48 NaN/inf"),
        ("nothr", {k: v for k, v in t.items() if k != "threshold"}, r"needs tensor\(s\) threshold"),
    ):
        p = tmp_path / name / "params.npz"
        p.parent.mkdir()
        np.savez(p, **{k: np.asarray(v) for k, v in bad.items()})
        with pytest.raises(ValueError, match=rf"{name}/params.npz: .*{pattern}"):
            gemma_scope.load(p)


def test_d_in_that_does_not_fit_the_model_names_the_file_and_both_widths(tmp_path):
    model = tiny_model()  # d_model 32
    t = {"W_enc": torch.randn(16, D_SAE), "W_dec": torch.randn(D_SAE, 16), "b_enc": torch.zeros(D_SAE),
         "b_dec": torch.zeros(16)}
    _write_saelens(tmp_path / "saes" / "narrow", t, {**_v6("standard"), "d_in": 16})
    with pytest.raises(ValueError, match=r"narrow\) reads activations of width 16, but the model's width is 32"):
        fc.load_dictionaries(f"saelens:{tmp_path / 'saes'}", model)


# -- hooks → submodules ----------------------------------------------------------------------------------------
def test_hook_names_map_to_the_exactly_matching_submodule():
    neox, gpt2, gemma = tiny_model("gpt_neox"), tiny_model("gpt2"), tiny_model("gemma2")
    for model in (neox, gemma):
        assert submodule_for_hook("hook_embed", model) == "embed"
        assert submodule_for_hook("blocks.0.hook_resid_pre", model) == "embed"
    assert submodule_for_hook("blocks.0.hook_resid_pre", gpt2) == "embed"  # token + position embedding
    with pytest.raises(ValueError, match="hook_embed.*no exact counterpart.*token \\+ position"):
        submodule_for_hook("hook_embed", gpt2)
    assert submodule_for_hook("blocks.1.hook_resid_post", neox) == "resid_1"
    assert submodule_for_hook("blocks.1.hook_resid_pre", neox) == "resid_0"
    assert submodule_for_hook("blocks.1.hook_attn_out", gpt2) == "attn_1"
    assert submodule_for_hook("blocks.0.hook_mlp_out", neox) == "mlp_0"
    assert submodule_for_hook("x", neox, hf_hook="gpt_neox.layers.1.mlp") == "mlp_1"  # SAELens hf_hook_name
    with pytest.raises(ValueError, match=r"\*after\* its post-mlp RMSNorm"):
        submodule_for_hook("blocks.0.hook_mlp_out", gemma)
    assert submodule_for_hook("blocks.0.attn.hook_z", neox) == "z_0"  # attention SAEs (tests/test_z.py)
    with pytest.raises(ValueError, match="layer 5, but the model has 2 layers"):
        submodule_for_hook("blocks.5.hook_resid_post", neox)
    with pytest.raises(ValueError, match="blocks.0.hook_resid_mid.*no featurecircuits submodule"):
        submodule_for_hook("blocks.0.hook_resid_mid", neox)
    with pytest.raises(ValueError, match="unknown hook name 'resid'"):
        submodule_for_hook("resid", neox)


def test_a_folder_of_saelens_saes_is_a_dictionary_set(tmp_path, caplog):
    model = tiny_model()
    dicts = random_dictionaries(model)
    saelens.save_set({k: dicts[k] for k in ("embed", "attn_1", "resid_1")}, model, tmp_path / "set")
    assert (tmp_path / "set" / "blocks.1.hook_resid_post" / "cfg.json").is_file()
    with caplog.at_level("INFO", logger="featurecircuits.dictionaries"):
        loaded = fc.load_dictionaries(f"saelens:{tmp_path / 'set'}", model)
    assert list(loaded) == ["embed", "attn_1", "resid_1"]
    assert "hook blocks.1.hook_resid_post) → resid_1" in caplog.text
    assert "dictionaries on 3 of 7 submodules: embed, attn_1, resid_1; without (no nodes): attn_0" in caplog.text
    assert fc.load_dictionaries(tmp_path / "set", model).keys() == loaded.keys()  # format detected
    for k, ae in loaded.items():
        assert ae.source.hash == dicts[k].source.hash  # same weights, same hash, whatever the format
        x = torch.randn(3, 32)
        torch.testing.assert_close(ae.decode(ae.encode(x)), dicts[k].decode(dicts[k].encode(x)))
    # two SAEs on one hook are refused; a selection keeps one
    saelens.save(dicts["mlp_0"], tmp_path / "set" / "other_resid_1", hook_name="blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="two SAEs map to resid_1"):
        fc.load_dictionaries(f"saelens:{tmp_path / 'set'}", model)
    assert list(fc.load_dictionaries(f"saelens:{tmp_path / 'set'}@other", model)) == ["resid_1"]


# -- Gemma Scope layout ----------------------------------------------------------------------------------------
def _gs_tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D_IN, D_SAE, generator=g), "W_dec": torch.randn(D_SAE, D_IN, generator=g),
            "b_enc": torch.randn(D_SAE, generator=g) * 0.1, "b_dec": torch.randn(D_IN, generator=g) * 0.1,
            "threshold": torch.rand(D_SAE, generator=g)}


def test_gemma_scope_layout_and_l0_choice(tmp_path):
    model = tiny_model()
    root = tmp_path / "gemma-scope-res"
    made = {}
    for layer in range(2):
        for width, l0s in (("width_48", (22, 91, 140)), ("width_1k", (80,))):
            for l0 in l0s:
                t = _gs_tensors(seed=100 * layer + l0)
                p = root / f"layer_{layer}" / width / f"average_l0_{l0}" / "params.npz"
                p.parent.mkdir(parents=True)
                np.savez(p, **{k: v.numpy() for k, v in t.items()})
                made[(layer, width, l0)] = t
    loaded = fc.load_dictionaries(f"gemma-scope-res:{root}", model)
    assert list(loaded) == ["resid_0", "resid_1"]  # smallest width, L0 closest to 100
    assert loaded["resid_1"].source.path.endswith("layer_1/width_48/average_l0_91/params.npz")
    x = torch.randn(3, D_IN)
    t = made[(1, "width_48", 91)]
    pre = x @ t["W_enc"] + t["b_enc"]  # Gemma Scope: no b_dec subtracted before encoding
    f = torch.relu(pre) * (pre > t["threshold"])
    torch.testing.assert_close(loaded["resid_1"].encode(x), f)
    torch.testing.assert_close(loaded["resid_1"].decode(f), f @ t["W_dec"] + t["b_dec"])
    low = fc.load_dictionaries(f"gemma-scope-res:{root}@l0=30", model)
    assert low["resid_0"].source.path.endswith("average_l0_22/params.npz")
    assert fc.load_dictionaries(f"gemma-scope-res:{root}", model, l0=150)["resid_0"].source.path.endswith(
        "average_l0_140/params.npz")
    with pytest.raises(FileNotFoundError, match="no width_16k folder"):
        fc.load_dictionaries(f"gemma-scope-res:{root}@width=16k", model)
    # the mlp suite reads hook_mlp_out; several parts joined by '+'
    both = fc.load_dictionaries(f"gemma-scope-res:{root}+gemma-scope-mlp:{root}@l0=80,width=1k", model)
    assert list(both) == ["mlp_0", "resid_0", "mlp_1", "resid_1"]
    assert list(fc.load_dictionaries(f"gemma-scope-att:{root}", model)) == ["z_0", "z_1"]  # the att suite: hook_z
    with pytest.raises(ValueError, match="looks like a Gemma Scope suite.*gemma-scope-res:<folder>"):
        fc.load_dictionaries(root, model)
    with pytest.raises(ValueError, match="unknown option 'foo'"):
        fc.load_dictionaries(f"gemma-scope-res:{root}@foo=1", model)


# -- partial sets ----------------------------------------------------------------------------------------------
def _edge_by_intervention(model, dicts, res, batch, u, d):
    """c_d · ∂d/∂ε at ε = 0 where ε·Δu is added to resid_0's output (an intervention on the plain HF model,
    differentiated exactly; finite differences are noisy here because the path runs through ReLU encoders)."""
    (u_sub, u_part, u_feat, _), (d_sub, d_part, d_feat, _) = u, d
    delta = res.deltas[u_sub][u_part]
    v = delta[..., u_feat, None] * dicts[u_sub].decoder_rows[u_feat] if u_part == "act" else delta
    eps = torch.zeros((), dtype=torch.float64, requires_grad=True)
    layers, captured = model.hf.gpt_neox.layers, {}
    hooks = [layers[0].register_forward_hook(lambda m, i, o: o + eps * v),
             layers[1].register_forward_hook(lambda m, i, o: captured.setdefault("x", o))]
    try:
        model.hf(batch.clean)
    finally:
        for h in hooks:
            h.remove()
    x1, ae, c = captured["x"], dicts[d_sub], res.coefficients[d_sub][d_part]
    f = ae.encode(x1)
    value = (f[..., d_feat] * c[..., d_feat]).sum(-1) if d_part == "act" else ((x1 - ae.decode(f)) * c).sum((1, 2))
    (g,) = torch.autograd.grad(value.mean(), eps)
    return float(g)


def test_a_residual_only_set_puts_nodes_and_edges_on_the_residual_stream():
    from featurecircuits.circuit import discover
    from featurecircuits.nodes import parse_node_id
    from featurecircuits.splice import Splice

    model = tiny_model("gpt_neox")
    model.hf.double()
    dicts = {k: v.double() for k, v in random_dictionaries(model).items() if k.startswith("resid")}
    batch = random_batch(n=2, t=4)
    c = discover(model, dicts, [batch], method="atp", node_threshold=0.0, edge_threshold=1e-4, aggregation="sum")
    subs = {parse_node_id(n)[0] for n in c.graph.nodes if n != "logit"}
    assert subs == {"resid_0", "resid_1"}  # only submodules with a dictionary carry nodes
    assert [s.name for s in Splice(model, dicts).submodules] == ["resid_0", "resid_1"]
    res = fc.attribute(model, batch, method="atp", dictionaries=dicts)
    edges = [(u, d, w) for u, d, w in c.graph.edges(data="weight")
             if parse_node_id(u)[0] == "resid_0" and d != "logit" and parse_node_id(d)[0] == "resid_1"]
    assert len(edges) >= 20  # resid_0 → resid_1, through attn_1 and mlp_1 (not spliced, so not cut)
    kinds = set()
    for u, d, w in sorted(edges, key=lambda e: -abs(e[2]))[:16]:
        expected = _edge_by_intervention(model, dicts, res, batch, parse_node_id(u), parse_node_id(d))
        assert w == pytest.approx(expected, rel=1e-6, abs=1e-9), (u, d)
        kinds.add((parse_node_id(u)[1], parse_node_id(d)[1]))
    assert {("act", "err"), ("err", "act"), ("err", "err")} <= kinds


# -- SAELens releases (the extra faked here; the real package is tested in test_saelens_extra.py) ---------------
class _FakeCfg:
    def __init__(self, d):
        self.d = d

    def to_dict(self):
        return self.d


class _FakeSAE:
    def __init__(self, cfg, state):
        self.cfg, self._state = _FakeCfg(cfg), state

    def state_dict(self):
        return self._state


def test_saelens_release_ids_go_through_saelens_registry_and_from_pretrained(monkeypatch):
    model = tiny_model()
    dicts = random_dictionaries(model)
    stored = {}
    for name in ("resid_0", "resid_1"):
        fields, tensors = saelens.to_saelens(dicts[name])
        hook = f"blocks.{name[-1]}.hook_resid_post"
        stored[f"layer_{name[-1]}/width_64/canonical"] = ({**fields, "metadata": {"hook_name": hook}}, tensors)
    calls = []

    def from_pretrained(release, sae_id, device="cpu"):
        calls.append((release, sae_id))
        return _FakeSAE(*stored[sae_id])

    fake = types.ModuleType("sae_lens")
    fake.SAE = types.SimpleNamespace(from_pretrained=from_pretrained)
    directory = types.ModuleType("sae_lens.loading.pretrained_saes_directory")
    directory.get_pretrained_saes_directory = lambda: {
        "tiny-res": types.SimpleNamespace(saes_map={k: k for k in stored})}
    monkeypatch.setitem(sys.modules, "sae_lens", fake)
    monkeypatch.setitem(sys.modules, "sae_lens.loading", types.ModuleType("sae_lens.loading"))
    monkeypatch.setitem(sys.modules, "sae_lens.loading.pretrained_saes_directory", directory)
    loaded = fc.load_dictionaries("saelens:tiny-res", model)
    assert list(loaded) == ["resid_0", "resid_1"] and len(calls) == 2
    assert loaded["resid_1"].source.path == "tiny-res/layer_1/width_64/canonical"
    assert loaded["resid_1"].source.hash == dicts["resid_1"].source.hash
    assert list(fc.load_dictionaries("saelens:tiny-res@layer_1", model)) == ["resid_1"]
    with pytest.raises(ValueError, match="unknown SAELens release 'tiny-mlp'; similar: tiny-res"):
        fc.load_dictionaries("saelens:tiny-mlp", model)


def test_saelens_release_without_the_extra_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # import fails
    with pytest.raises(ModuleNotFoundError, match=r'pip install "featurecircuits\[saelens\]"'):
        fc.load_dictionaries("saelens:gemma-scope-2b-pt-res-canonical", tiny_model())


# -- equivalence on the organism -------------------------------------------------------------------------------
organism = pytest.mark.organism


def _jumprelu(ae, threshold=0.02):
    """An equivalent-in-spirit JumpReLU SAE without b_pre (Gemma Scope's form) from an organism AutoEncoder."""
    b_enc = ae.b_enc - ae.W_enc @ ae.b_pre
    return fc.SAE(ae.W_enc, b_enc, ae.W_dec, ae.b_dec, activation="jumprelu",
                  threshold=torch.full((ae.width,), threshold)).with_source("memory", "")


def _same_circuit(a, b):
    assert sorted(a.graph.nodes) == sorted(b.graph.nodes)
    for n in a.graph.nodes:
        assert a.graph.nodes[n]["score"] == pytest.approx(b.graph.nodes[n]["score"], abs=1e-6), n
    ea = {(u, v): w for u, v, w in a.graph.edges(data="weight")}
    eb = {(u, v): w for u, v, w in b.graph.edges(data="weight")}
    assert ea.keys() == eb.keys()
    for k in ea:
        assert ea[k] == pytest.approx(eb[k], abs=1e-6), k


@organism
def test_organism_in_saelens_and_gemma_scope_formats_gives_the_same_circuits(tmp_path):
    from featurecircuits.tasks import Task, make_task

    model = fc.load_model("organism")
    original = fc.load_dictionaries("organism", model)
    saelens.save_set(original, model, tmp_path / "saelens")
    converted = fc.load_dictionaries(f"saelens:{tmp_path / 'saelens'}", model)
    assert list(converted) == list(original)
    assert {k: v.source.hash for k, v in converted.items()} == {k: v.source.hash for k, v in original.items()}
    assert all(v.source.format == "saelens" for v in converted.values())
    task = Task("sva-rc", make_task("sva-rc", 8, seed=0))
    kw = dict(method="relp", node_threshold=0.1, edge_threshold=0.02, n_examples=8)
    c_orig = fc.discover(model, original, task, **kw)
    c_conv = fc.discover(model, converted, task, **kw)
    assert len(c_orig) > 10 and c_orig.n_edges > 10
    _same_circuit(c_orig, c_conv)
    r_orig = fc.evaluate(model, original, c_orig, task, n_examples=8)
    r_conv = fc.evaluate(model, converted, c_orig, task, n_examples=8)  # equal hashes: accepted across formats
    assert r_conv.faithfulness == pytest.approx(r_orig.faithfulness, abs=1e-6)
    assert r_conv.completeness == pytest.approx(r_orig.completeness, abs=1e-6)

    # a JumpReLU residual set (partial) written as Gemma Scope params.npz and read back
    jump = {f"resid_{layer}": _jumprelu(original[f"resid_{layer}"]) for layer in range(model.n_layers)}
    gemma_scope.save_suite({int(k.split("_")[1]): v for k, v in jump.items()}, tmp_path / "gs-res")
    gs = fc.load_dictionaries(f"gemma-scope-res:{tmp_path / 'gs-res'}", model)
    assert list(gs) == list(jump) and all(gs[k].source.hash == jump[k].weights_hash() for k in jump)
    c_mem = fc.discover(model, jump, task, **kw)
    c_gs = fc.discover(model, gs, task, **kw)
    assert len(c_mem) > 5
    _same_circuit(c_mem, c_gs)
    f_mem = fc.evaluate(model, jump, c_mem, task, n_examples=8).faithfulness
    assert fc.evaluate(model, gs, c_mem, task, n_examples=8).faithfulness == pytest.approx(f_mem, abs=1e-6)


def test_dictionary_learning_writer_and_saelens_writer_agree():
    model = tiny_model()
    ae = random_dictionaries(model)["mlp_1"]
    cls, state = dictionary_learning.state_dict(ae)
    fields, tensors = saelens.to_saelens(ae)
    assert cls == "AutoEncoder" and fields["apply_b_dec_to_input"] is True
    assert torch.equal(tensors["W_enc"], state["encoder.weight"].t())
