"""Tiny random models of every supported family, built from configs (offline, seconds), and the shipped
organism for the tests that need a model with real circuits.

Tests that need the organism are marked ``@pytest.mark.organism`` (or use the ``organism`` fixture): where
it is missing they skip, except under ``CI`` (set by ``.ci/run``), where they fail — so that golden outputs
can never vanish silently.
"""

from __future__ import annotations

import os

import pytest
import torch
import transformers as tr

import featurecircuits as fc

VOCAB = 40


def _configs(layers: int = 2) -> dict[str, object]:
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64)
    gqa = dict(common, num_key_value_heads=2)
    return {
        "gpt_neox": tr.GPTNeoXConfig(**common, rotary_pct=0.25, use_parallel_residual=True),
        "gpt2": tr.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=64,
                              bos_token_id=0, eos_token_id=0),
        "llama": tr.LlamaConfig(**gqa),
        "qwen2": tr.Qwen2Config(**gqa),
        "gemma2": tr.Gemma2Config(**gqa, head_dim=8),
        "gemma3": tr.Gemma3TextConfig(**gqa, head_dim=8),
        "qwen3": tr.Qwen3Config(**gqa, head_dim=8),
    }


FAMILY_NAMES = list(_configs())


def tiny_hf(family: str, seed: int = 0, layers: int = 2, **config):
    """A tiny randomly initialised model of ``family``; ``config``: attributes set on its config (e.g.
    ``sliding_window``)."""
    torch.manual_seed(seed)
    config, changes = _configs(layers)[family], config
    for key, value in changes.items():
        setattr(config, key, value)
    model = tr.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    # Random init leaves RMSNorm/LayerNorm weights at their constants; perturb them so that rules
    # which involve the norm weight are really exercised.
    with torch.no_grad():
        for mod in model.modules():
            w = getattr(mod, "weight", None)
            if w is not None and w.ndim == 1:
                w.add_(0.1 * torch.randn_like(w))
    return model.eval()


def tiny_model(family: str = "gpt_neox", seed: int = 0, layers: int = 2, **config) -> fc.Model:
    return fc.load_model(tiny_hf(family, seed, layers, **config))


def random_batch(n: int = 3, t: int = 6, seed: int = 1) -> fc.Batch:
    g = torch.Generator().manual_seed(seed)
    return fc.Batch(torch.randint(0, VOCAB, (n, t), generator=g), torch.randint(0, VOCAB, (n, t), generator=g),
                    torch.randint(0, VOCAB, (n,), generator=g), torch.randint(0, VOCAB, (n,), generator=g))


def random_dictionaries(model: fc.Model, size: int = 64, seed: int = 0) -> dict:
    """AutoEncoders with random weights for every submodule (biases nonzero so features are sparse)."""
    from dictionary_learning import AutoEncoder

    from featurecircuits.dictionaries.dictionary_learning import convert

    torch.manual_seed(seed)
    out = {}
    for sub in model.submodules:
        ae = AutoEncoder(model.d_model, size)
        with torch.no_grad():
            ae.encoder.bias.normal_(0, 0.3)
            ae.bias.normal_(0, 0.1)
        ae.activation_dim, ae.dict_size = model.d_model, size
        out[sub.name] = convert(ae).eval().requires_grad_(False)
    return out


def linear_gpt_neox(seed: int = 0) -> fc.Model:
    """A GPT-NeoX with every nonlinearity removed: no norms, linear activation, and zero query/key
    weights (so attention is uniform over the causal prefix, linear in the values)."""
    torch.manual_seed(seed)
    cfg = tr.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25,
                           hidden_act="linear")
    hf = tr.GPTNeoXForCausalLM(cfg).eval()
    hd = cfg.hidden_size // cfg.num_attention_heads
    with torch.no_grad():
        for layer in hf.gpt_neox.layers:
            layer.input_layernorm = torch.nn.Identity()
            layer.post_attention_layernorm = torch.nn.Identity()
            qkv = layer.attention.query_key_value
            for h in range(cfg.num_attention_heads):
                rows = slice(h * 3 * hd, h * 3 * hd + 2 * hd)  # per head: q, k, then v
                qkv.weight[rows] = 0
                qkv.bias[rows] = 0
        hf.gpt_neox.final_layer_norm = torch.nn.Identity()
    return fc.load_model(hf)


@pytest.fixture(params=FAMILY_NAMES)
def family(request) -> str:
    return request.param


# --------------------------------------------------------------------------------------------------
# The shipped organism

ORGANISM_BUILT = (fc.paths.ORGANISM_DIR / "config.json").exists()


def pytest_configure(config):
    config.addinivalue_line("markers", "organism: needs the shipped organism (skips where it is missing, fails "
                                       "under CI)")


def _organism_missing():
    message = f"the organism is not built ({fc.paths.ORGANISM_DIR})"
    if os.environ.get("CI"):
        pytest.fail(message + "; under CI every test that needs it must run")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _organism_marker(request):
    if request.node.get_closest_marker("organism") is not None and not ORGANISM_BUILT:
        _organism_missing()


@pytest.fixture(scope="session")
def organism():
    """(model, dictionaries) of the shipped organism, loaded once per session; tests must not change them."""
    if not ORGANISM_BUILT:
        _organism_missing()
    model = fc.load_model("organism")
    return model, fc.load_dictionaries("organism", model)
