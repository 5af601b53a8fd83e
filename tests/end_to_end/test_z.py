"""Attention SAEs on hook_z: the ``z_l`` submodule (the input of attention's output projection) in every
family, spliced, attributed, connected by edges, ablated, loaded from SAELens and Gemma Scope files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tr

import featurecircuits as fc
from featurecircuits.dictionaries import saelens
from featurecircuits.dictionaries.base import SAE
from featurecircuits.dictionaries.hooks import hook_for_submodule, submodule_for_hook
from featurecircuits.splice import run
from tests.conftest import FAMILY_NAMES, VOCAB, random_batch, tiny_hf, tiny_model


def _out_proj(model: fc.Model, layer: int) -> torch.nn.Module:
    return model.layer_module(layer, model.family.attn).get_submodule(model.family.attn_out)


def _sae(d_in: int, width: int = 48, seed: int = 0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    ae = SAE(torch.randn(width, d_in, generator=g) / d_in ** 0.5, torch.randn(width, generator=g) * 0.2 - 0.1,
             torch.randn(d_in, width, generator=g) / width ** 0.5, torch.randn(d_in, generator=g) * 0.05)
    return ae.eval().requires_grad_(False)


def _z_dictionaries(model: fc.Model, names=("z_0", "z_1", "resid_1")) -> dict:
    return {n: _sae(model.width(n), seed=i).to(model.dtype) for i, n in enumerate(names)}


def _capture_z(model: fc.Model, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """The output projection's input, by a plain forward pre-hook (no nnsight)."""
    got = {}
    h = _out_proj(model, layer).register_forward_pre_hook(lambda m, args: got.setdefault("z", args[0].detach()))
    try:
        with torch.no_grad():
            model.hf(input_ids=ids)
    finally:
        h.remove()
    return got["z"]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_z_is_the_output_projections_input_in_every_family(family):
    model = tiny_model(family)
    names = [s.name for s in model.all_submodules]
    assert names[:5] == ["embed", "z_0", "attn_0", "mlp_0", "resid_0"]
    assert "z_0" not in [s.name for s in model.submodules]  # not in the default set
    ids = random_batch().clean
    seen = {}

    def edit(sub, x):
        seen[sub.name] = x.detach().clone()

    with torch.no_grad():
        logits = run(model, ids, edit, model.select(["z_1", "attn_1"]))
        ref = model.hf(input_ids=ids).logits
    assert torch.equal(logits, ref)  # reading z changes nothing
    assert seen["z_1"].shape[-1] == model.z_width == model.width("z_1")
    assert torch.equal(seen["z_1"], _capture_z(model, 1, ids))
    with torch.no_grad():
        torch.testing.assert_close(_out_proj(model, 1)(seen["z_1"]), seen["attn_1"], rtol=0, atol=1e-6)
    assert hook_for_submodule("z_1", model) == "blocks.1.attn.hook_z"
    assert submodule_for_hook("blocks.1.attn.hook_z", model) == "z_1"


def test_z_width_is_heads_times_head_dimension():
    cfg = tr.Gemma3TextConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = fc.load_model(tr.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval())
    assert (model.d_model, model.z_width) == (32, 64)
    assert _capture_z(model, 0, random_batch().clean).shape[-1] == 64
    dicts = _z_dictionaries(model, ("z_0",))
    res = fc.attribute(model, random_batch(), method="relp", dictionaries=dicts)
    assert res.scores["z_0"].shape == (3, 6, 48)
    with pytest.raises(ValueError, match=r"dictionary for z_0 .*width 32, but the model's attention width "
                                         r"\(heads × head dimension\) is 64"):
        fc.dictionaries.sets.check_dictionary(_sae(32), model, "z_0")


def _patch_z(model, layer, ids, fn):
    """Logits with the output projection's input replaced by ``fn(z)`` (plain pre-hook)."""
    h = _out_proj(model, layer).register_forward_pre_hook(lambda m, args: (fn(args[0]), *args[1:]))
    try:
        return model.hf(input_ids=ids).logits
    finally:
        h.remove()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_z_features_ap_and_atp_match_direct_interventions(family):
    """AP of a z feature = the metric with that feature patched through a pre-hook; AtP = Δ · the
    gradient taken through the same hook; the sparse path equals the dense one."""
    model = fc.load_model(tiny_hf(family).double())
    dicts = {k: v.double() for k, v in _z_dictionaries(model).items()}
    batch = random_batch(n=2, t=5)
    ap = fc.attribute(model, batch, method="ap", dictionaries=dicts)
    atp = fc.attribute(model, batch, method="atp", dictionaries=dicts)
    sparse = fc.attribute(model, batch, method="atp", dictionaries=dicts, sparse=True)
    torch.testing.assert_close(sparse.scores["z_1"].to_dense(), atp.scores["z_1"], rtol=0, atol=1e-12)
    ae = dicts["z_1"]
    z_clean, z_patch = _capture_z(model, 1, batch.clean), _capture_z(model, 1, batch.patch)
    f_clean, f_patch = ae.encode(z_clean), ae.encode(z_patch)
    moving = ((f_patch - f_clean).abs() > 1e-6).nonzero().tolist()
    assert moving, "no z feature differs between the runs"
    ld = lambda logits: fc.logit_diff(logits, batch)  # noqa: E731
    with torch.no_grad():
        m_clean = ld(model.hf(input_ids=batch.clean).logits)
    for b, t, i in moving[:6]:
        def patch(z, b=b, t=t, i=i):
            z = z.clone()
            z[b, t] += (f_patch[b, t, i] - f_clean[b, t, i]) * ae.decoder_rows[i]
            return z

        with torch.no_grad():
            effect = ld(_patch_z(model, 1, batch.clean, patch))[b] - m_clean[b]
        assert float(ap.scores["z_1"][b, t, i]) == pytest.approx(float(effect), rel=1e-9, abs=1e-12)
    # AtP: ∂m/∂f_i at the clean run = ∂m/∂z · decoder row i
    z_leaf = {}

    def grab(z):
        z_leaf["z"] = z
        z.retain_grad()
        return z

    ld(_patch_z(model, 1, batch.clean, grab)).sum().backward()
    grad_f = z_leaf["z"].grad @ ae.decoder_rows.T
    torch.testing.assert_close(atp.scores["z_1"], (f_patch - f_clean) * grad_f, rtol=1e-9, atol=1e-12)


def test_z_edges_follow_the_topology_and_equal_the_derivative():
    from featurecircuits.edges import score_edges
    from featurecircuits.splice import Splice

    model = fc.load_model(tiny_hf("gpt_neox").double())
    names = ("resid_0", "z_1", "attn_1", "resid_1")
    dicts = {k: v.double() for k, v in _z_dictionaries(model, names).items()}
    batch = random_batch(n=2, t=5)
    res = fc.attribute(model, batch, method="atp", dictionaries=dicts)
    splice = Splice(model, dicts)
    nodes = [(n, "act", i, None) for n in names for i in range(dicts[n].width)] + [(n, "err", None, None)
                                                                                   for n in names]
    w = score_edges(model, splice, batch, res, nodes).weights
    pairs = {(u[0], d[0]) for (u, d), v in w.items() if v != 0}
    assert ("resid_0", "z_1") in pairs and ("z_1", "attn_1") in pairs
    assert ("resid_0", "attn_1") not in pairs  # every path runs through z_1
    assert ("z_1", "resid_1") not in pairs  # through attn_1
    # z_1 feature → attn_1 feature: c_d · ∂d/∂ε where ε · Δu (decoded) is added to z_1
    top = sorted(((k, v) for k, v in w.items() if k[0][0] == "z_1" and k[1][0] == "attn_1" and k[0][1] == "act"
                  and k[1][1] == "act"), key=lambda kv: -abs(kv[1]))[:5]
    assert top
    for (u, d), weight in top:
        v = res.deltas["z_1"]["act"][..., u[2], None] * dicts["z_1"].decoder_rows[u[2]]
        eps = torch.zeros((), dtype=torch.float64, requires_grad=True)
        got = {}
        shift = lambda m, a, eps=eps, v=v: (a[0] + eps * v,)  # noqa: E731
        grab = lambda m, i, o, got=got: got.setdefault("x", o[0])  # noqa: E731
        hooks = [_out_proj(model, 1).register_forward_pre_hook(shift),
                 model.layer_module(1, "attention").register_forward_hook(grab)]
        try:
            model.hf(input_ids=batch.clean)
        finally:
            for h in hooks:
                h.remove()
        c = res.coefficients["attn_1"]["act"][..., d[2]]
        value = (dicts["attn_1"].encode(got["x"])[..., d[2]] * c).sum()
        (g,) = torch.autograd.grad(value, eps)
        assert weight == pytest.approx(float(g), rel=1e-8, abs=1e-12)


def test_a_circuit_with_z_nodes_is_found_evaluated_plotted_and_exported(tmp_path):
    from featurecircuits.circuit import discover
    from featurecircuits.evaluation import evaluate
    from featurecircuits.export import export_rows
    from featurecircuits.nodes import parse_node_id
    from featurecircuits.plots import circuit_figure, submodule_rows

    model = tiny_model("gpt_neox")
    dicts = _z_dictionaries(model, ("z_0", "resid_0", "z_1", "resid_1"))
    batches = [random_batch(n=3, t=5, seed=s) for s in (1, 2)]
    full = discover(model, dicts, batches, method="relp", node_threshold=0.0, edge_threshold=0.0)
    subs = {parse_node_id(n)[0] for n in full.nodes}
    assert {"z_0", "z_1"} <= subs and any(n.startswith("z_1/f") for n in full.nodes)
    assert full.metadata["submodules"] == ["z_0", "resid_0", "z_1", "resid_1"]
    f = evaluate(model, dicts, full, batches)
    assert f.faithfulness == pytest.approx(1.0, abs=1e-5)  # every node kept: the model itself
    small = discover(model, dicts, batches, method="relp", top_k=3, edge_threshold=0.0)
    assert evaluate(model, dicts, small, batches).n_nodes == 3
    assert submodule_rows(full) == ["z_0", "resid_0", "z_1", "resid_1"]
    assert "z_1" in circuit_figure(full).to_json()  # its own labelled row
    assert export_rows(model, full)[:6] == ["embed", "z_0", "attn_0", "mlp_0", "resid_0", "z_1"]
    assert export_rows(model, small) == export_rows(model, full)  # rows from the circuit's submodules
    path = tmp_path / "c.json"
    path.write_text(full.to_json())
    back = fc.Circuit.from_json(path, model=model)
    assert set(back.nodes) == set(full.nodes)
    assert evaluate(model, dicts, back, batches).faithfulness == f.faithfulness


def test_attention_saes_load_from_saelens_and_gemma_scope_files(tmp_path):
    model = tiny_model("gpt_neox")
    dicts = _z_dictionaries(model, ("z_1", "resid_1"))
    saelens.save_set(dicts, model, tmp_path / "set")
    cfg = json.loads((tmp_path / "set" / "blocks.1.attn.hook_z" / "cfg.json").read_text())
    assert cfg["reshape_activations"] == "hook_z"  # how SAELens itself feeds (…, heads, head_dim) to the SAE
    loaded = fc.load_dictionaries(f"saelens:{tmp_path / 'set'}", model)
    assert list(loaded) == ["z_1", "resid_1"]
    x = torch.randn(4, model.z_width)
    torch.testing.assert_close(loaded["z_1"].encode(x), dicts["z_1"].encode(x), rtol=1e-6, atol=1e-6)
    # Gemma Scope's att suite: layer_N/width_W/average_l0_X/params.npz on hook_z
    g = torch.Generator().manual_seed(3)
    d, w = model.z_width, 40
    for layer in range(2):
        p = tmp_path / "gs-att" / f"layer_{layer}" / "width_40" / "average_l0_90" / "params.npz"
        p.parent.mkdir(parents=True)
        np.savez(p, W_enc=torch.randn(d, w, generator=g).numpy(), W_dec=torch.randn(w, d, generator=g).numpy(),
                 b_enc=torch.zeros(w).numpy(), b_dec=torch.zeros(d).numpy(),
                 threshold=torch.rand(w, generator=g).numpy())
    att = fc.load_dictionaries(f"gemma-scope-att:{tmp_path / 'gs-att'}", model)
    assert list(att) == ["z_0", "z_1"] and att["z_0"].d_in == model.z_width
    # a z SAE of the wrong width is refused, naming the file
    bad = {"z_0": _sae(model.z_width + 8)}
    saelens.save_set({"resid_0": dicts["resid_1"]}, model, tmp_path / "bad")
    bad_dir = tmp_path / "bad" / "z"
    saelens.save(bad["z_0"], bad_dir, hook_name="blocks.0.attn.hook_z")
    with pytest.raises(ValueError, match=r"dictionary for z_0 \(.*bad/z.*width 40, but the model's attention width"):
        fc.load_dictionaries(f"saelens:{tmp_path / 'bad'}", model)
