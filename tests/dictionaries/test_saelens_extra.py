"""Against the real SAELens (the optional ``featurecircuits[saelens]`` extra): SAEs written by SAELens's own
``save_model`` and read back by our loader encode and decode identically (1e-6, in float64); SAELens objects in memory
convert the same way; release ids resolve through SAELens's own registry (its bundled pretrained_saes.yaml,
offline) with ``from_pretrained`` redirected to a local folder.

Skipped where sae-lens is not installed; .ci/run installs it in a venv of its own and runs this file there.
"""

from __future__ import annotations

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")

import featurecircuits as fc  # noqa: E402
from featurecircuits.dictionaries import saelens as ours  # noqa: E402

D_IN, D_SAE = 32, 64


def _make(arch: str, *, apply_b_dec: bool = True, seed: int = 0, **extra):
    from sae_lens.saes.sae import SAEMetadata

    classes = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
               "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
               "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
               "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig)}
    sae_cls, cfg_cls = classes[arch]
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec, dtype="float64", **extra)
    cfg.metadata = SAEMetadata(hook_name="blocks.1.hook_resid_post", model_name="tiny")
    sae = sae_cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.ndim == 2 else 0.1))
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(D_SAE, generator=g, dtype=torch.float64) * 0.2)
    return sae.eval()


CASES = [("standard", {}, True), ("standard", {}, False), ("jumprelu", {}, False), ("jumprelu", {}, True),
         ("topk", {"k": 6}, True), ("topk", {"k": 6, "rescale_acts_by_decoder_norm": True}, True),
         ("gated", {}, True), ("gated", {}, False)]


@pytest.mark.parametrize("arch,extra,apply_b_dec", CASES, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(CASES)])
def test_saes_saved_by_saelens_load_with_the_same_encode_and_decode(tmp_path, arch, extra, apply_b_dec):
    sae = _make(arch, apply_b_dec=apply_b_dec, **extra)
    sae.save_model(tmp_path / "sae")
    ae = ours.load(tmp_path / "sae")
    assert ae.hook_name == "blocks.1.hook_resid_post"
    x = torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        f_ref, out_ref = sae.encode(x), sae.decode(sae.encode(x))
    f = ae.encode(x)
    assert (f_ref > 0).any()
    torch.testing.assert_close(f, f_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ae.decode(f), out_ref, atol=1e-6, rtol=1e-6)
    converted = ours.convert(sae)  # the object in memory, as from_pretrained returns it
    torch.testing.assert_close(converted.decode(converted.encode(x)), out_ref, atol=1e-6, rtol=1e-6)
    assert converted.weights_hash() == ae.source.hash
    # and SAELens reads what we write
    ours.save(ae, tmp_path / "ours", hook_name="blocks.1.hook_resid_post")
    back = sae_lens.SAE.load_from_disk(tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(back.decode(back.encode(x)), out_ref, atol=1e-5, rtol=1e-5)


def test_release_ids_go_through_saelens_registry(tmp_path, monkeypatch):
    from tests.conftest import tiny_model

    ids = ours.release_ids("gemma-scope-2b-pt-res-canonical")  # SAELens's bundled registry, offline
    assert "layer_0/width_16k/canonical" in ids
    model = tiny_model()
    model.hf.double()
    saes = {f"layer_{i}/width_16k/canonical": _make("jumprelu", apply_b_dec=False, seed=i) for i in range(2)}
    for i, sae in enumerate(saes.values()):
        sae.cfg.metadata.hook_name = f"blocks.{i}.hook_resid_post"
    calls = []

    def from_pretrained(release, sae_id, device="cpu", **kwargs):  # the hub is unreachable here
        calls.append((release, sae_id))
        return saes[sae_id]

    monkeypatch.setattr(ours, "release_ids", lambda release: list(saes))
    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", staticmethod(from_pretrained))
    dicts = fc.load_dictionaries("saelens:gemma-scope-2b-pt-res-canonical@width_16k", model)
    assert list(dicts) == ["resid_0", "resid_1"] and len(calls) == 2
    assert dicts["resid_1"].source.path == "gemma-scope-2b-pt-res-canonical/layer_1/width_16k/canonical"


def test_an_attention_sae_on_hook_z_saved_by_saelens_sits_on_z(tmp_path):
    """SAELens's own hook_z SAE (``reshape_activations="hook_z"``: it flattens (…, heads, head_dim)) loads onto
    z_1, the attention output projection's input, and encodes there exactly as SAELens does."""
    from sae_lens.saes.sae import SAEMetadata

    from tests.conftest import tiny_model

    model = tiny_model("gpt_neox")
    model.hf.double()
    heads = model.config.num_attention_heads
    d_in = model.z_width
    cfg = sae_lens.StandardSAEConfig(d_in=d_in, d_sae=D_SAE, apply_b_dec_to_input=True, dtype="float64",
                                     reshape_activations="hook_z")
    cfg.metadata = SAEMetadata(hook_name="blocks.1.attn.hook_z", model_name="tiny")
    sae = sae_lens.StandardSAE(cfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.ndim == 2 else 0.1))
    sae.save_model(tmp_path / "set" / "z1")
    dicts = fc.load_dictionaries(f"saelens:{tmp_path / 'set'}", model)
    assert list(dicts) == ["z_1"]
    z = torch.randn(2, 4, heads, d_in // heads, generator=g, dtype=torch.float64)  # TransformerLens's hook_z
    with torch.no_grad():
        ref = sae.encode(z)
    torch.testing.assert_close(dicts["z_1"].encode(z.flatten(-2)), ref.reshape(2, 4, -1), atol=1e-9, rtol=1e-9)
