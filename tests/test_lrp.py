"""LRP rules: forward unchanged, the right local gradients, and a hand-computed one-layer case."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import featurecircuits as fc
from featurecircuits import lrp
from tests.conftest import random_batch, tiny_model

ALL_ON = [
    fc.LRPConfig(attention="ah", linear="epsilon"),
    fc.LRPConfig(attention="ah", linear="gamma"),
    fc.LRPConfig(),
    fc.LRPConfig.paper(),
    fc.LRPConfig(attention="uniform"),
    fc.LRPConfig(attention="uniform", qk_norm="grad"),
    fc.LRPConfig(attention="grad", qk_norm="grad"),
    fc.LRPConfig.gradient(),
]
ALL_ON_IDS = ["eps+ah", "gamma+ah", "default", "paper", "uniform", "uniform+qk_grad", "grad+qk_grad", "gradient"]
QK_NORM_FAMILIES = ("gemma3", "qwen3")


@pytest.mark.parametrize("config", ALL_ON, ids=ALL_ON_IDS)
def test_forward_is_bit_identical_under_every_rule(family, config):
    model = tiny_model(family)
    ids = random_batch().clean
    with torch.no_grad():
        plain = model.hf(input_ids=ids).logits
    with fc.apply_rules(model, config):
        ruled = model.hf(input_ids=ids).logits
    assert torch.equal(plain, ruled)
    # the rules are really switched off again on exit
    with torch.no_grad():
        assert torch.equal(model.hf(input_ids=ids).logits, plain)


def _input_grad(model, ids, config=None):
    emb = model.hf.get_input_embeddings()(ids).detach().requires_grad_(True)
    ctx = fc.apply_rules(model, config) if config else torch.enable_grad()
    with ctx:
        out = model.hf(inputs_embeds=emb).logits[:, -1].sum()
    (g,) = torch.autograd.grad(out, emb)
    return g


@pytest.mark.parametrize("rule", ["norm", "act", "gate", "attention"])
def test_coefficients_differ_from_gradient_exactly_where_a_rule_applies(family, rule):
    model = tiny_model(family)
    ids = random_batch().clean
    plain = _input_grad(model, ids)
    on = {"norm": "ln", "act": "identity", "gate": "half", "attention": "ah"}[rule]
    changed = _input_grad(model, ids, fc.LRPConfig.gradient().with_(**{rule: on}))
    gated = model.family.gate is not None
    if rule == "gate" and not gated:
        assert torch.equal(changed, plain)  # no gate in this family: the rule acts nowhere
    else:
        assert not torch.allclose(changed, plain, atol=1e-6)
    assert torch.equal(_input_grad(model, ids, fc.LRPConfig.gradient()), plain)


def test_ln_rule_local_gradient_is_weight_over_sigma_on_centred_input():
    torch.manual_seed(0)
    ln = nn.LayerNorm(6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(6, requires_grad=True)
    v = torch.randn(6)
    with lrp.hooks({ln: lrp.ln_rule()}):
        (g,) = torch.autograd.grad((ln(x) * v).sum(), x)
    sigma = (x.detach().var(unbiased=False) + ln.eps).sqrt()
    centre = torch.eye(6) - torch.full((6, 6), 1 / 6)
    expected = centre @ (ln.weight.detach() * v) / sigma
    assert torch.allclose(g, expected, atol=1e-6)


def test_rmsnorm_rule_keeps_gemma_one_plus_weight():
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm

    torch.manual_seed(0)
    norm = Gemma2RMSNorm(5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(5, requires_grad=True)
    with lrp.hooks({norm: lrp.ln_rule(weight_offset=1.0)}):
        (g,) = torch.autograd.grad(norm(x).sum(), x)
    rms = (x.detach().pow(2).mean() + norm.eps).sqrt()
    assert torch.allclose(g, (1 + norm.weight.detach()) / rms, atol=1e-6)


@pytest.mark.parametrize("act,name,factor", [
    (nn.GELU(), "gelu", lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2)))),
    (nn.SiLU(), "silu", torch.sigmoid),
    (nn.GELU(approximate="tanh"), "gelu_pytorch_tanh",
     lambda x: 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    (nn.Softplus(), "softplus", lambda x: nn.functional.softplus(x) / x),  # generic division
])
def test_identity_rule_local_gradient(act, name, factor):
    x = torch.linspace(-3, 3, 13)
    x = x[x != 0].requires_grad_(True)
    with lrp.hooks({act: lrp.identity_rule(name)}):
        y = act(x)
        (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(y, act(x.detach()))
    assert torch.allclose(g, factor(x.detach()), atol=1e-6)


def test_half_rule_halves_the_gate_factors():
    model = tiny_model("llama")
    ids = random_batch().clean
    mlp = model.layer_module(model.n_layers - 1, "mlp")
    got = {}

    def grads(config):
        kept = {}
        keep = lambda name: lambda m, a, o: kept.__setitem__(name, o) or o.retain_grad()  # noqa: E731
        with lrp.hooks({mlp.act_fn: keep("a"), mlp.up_proj: keep("b")}), fc.apply_rules(model, config):
            model.hf(input_ids=ids).logits[:, -1].sum().backward()
        return kept["a"].grad, kept["b"].grad

    got["plain"] = grads(fc.LRPConfig.gradient())
    got["half"] = grads(fc.LRPConfig.gradient().with_(gate="half"))
    for plain, half in zip(got["plain"], got["half"], strict=True):
        assert torch.allclose(half, 0.5 * plain, atol=1e-7)


def _qkv_grads(model, layer: int, config):
    """(q, k, v) gradients at layer ``layer``'s projections of the last position's logits under ``config``:
    separate modules, or slices of a fused one."""
    attn = model.layer_module(layer, model.family.attn)
    kept = {}

    def keep(name):
        def hook(m, a, o):
            kept[name] = o
            o.retain_grad()
        return hook

    fused = {"gpt_neox": "query_key_value", "gpt2": "c_attn"}.get(model.family.name)
    targets = ({getattr(attn, fused): keep("qkv")} if fused else
               {attn.q_proj: keep("q"), attn.k_proj: keep("k"), attn.v_proj: keep("v")})
    with lrp.hooks(targets), fc.apply_rules(model, config):
        model.hf(input_ids=random_batch().clean).logits[:, -1].sum().backward()
    if model.family.name == "gpt_neox":  # per head: [q | k | v], each head_dim wide
        g = kept["qkv"].grad
        heads = model.config.num_attention_heads
        g = g.view(*g.shape[:-1], heads, 3, -1)
        return g[..., 0, :], g[..., 1, :], g[..., 2, :]
    if model.family.name == "gpt2":  # [q | k | v], each d_model wide
        return kept["qkv"].grad.split(model.d_model, dim=-1)
    return tuple(kept[n].grad for n in ("q", "k", "v"))


def test_ah_rule_cuts_query_and_key_paths(family):
    model = tiny_model(family)
    q, k, v = _qkv_grads(model, 0, fc.LRPConfig.gradient().with_(attention="ah"))
    assert q is None or not q.any()
    assert k is None or not k.any()
    assert v.abs().sum() > 0


def test_gamma_rule_conserves_relevance_and_epsilon_absorbs_some():
    torch.manual_seed(0)
    lin = nn.Linear(5, 4, bias=False)
    x = torch.randn(5, requires_grad=True)
    g_out = torch.randn(4)
    z = lin(x).detach()
    with lrp.hooks({lin: lrp.gamma_rule(0.5)}):
        (g,) = torch.autograd.grad((lin(x) * g_out).sum(), x)
    assert torch.allclose((x * g).sum(), (z * g_out).sum(), atol=1e-5)  # Σ R_in = Σ R_out
    with lrp.hooks({lin: lrp.epsilon_rule(0.1)}):
        (g,) = torch.autograd.grad((lin(x) * g_out).sum(), x)
    expected = lin.weight.detach().t() @ (g_out * z / (z + 0.1 * torch.sign(z)))
    assert torch.allclose(g, expected, atol=1e-6)


def test_hand_computed_relevance_one_layer():
    """x → LayerNorm → Linear → GELU → Linear → scalar; relevance R = x ⊙ c by hand."""
    torch.manual_seed(0)
    ln, l1, act, l2 = nn.LayerNorm(4), nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 1)
    with torch.no_grad():
        ln.weight.normal_()
    net = nn.Sequential(ln, l1, act, l2)
    x = torch.randn(4, requires_grad=True)
    with lrp.hooks({ln: lrp.ln_rule(), act: lrp.identity_rule("gelu")}):
        (c,) = torch.autograd.grad(net(x).sum(), x)
    xd = x.detach()
    xc = xd - xd.mean()
    sigma = (xc.pow(2).mean() + ln.eps).sqrt()
    z1 = l1.weight @ (xc / sigma * ln.weight + ln.bias) + l1.bias
    phi = 0.5 * (1 + torch.erf(z1 / math.sqrt(2)))
    c_ln_out = (l2.weight[0] * phi) @ l1.weight  # coefficient at the LayerNorm output
    c_hand = (torch.eye(4) - 0.25) @ (c_ln_out * ln.weight) / sigma
    assert torch.allclose(c, c_hand.detach(), atol=1e-6)
    relevance = xd * c
    assert torch.allclose(relevance, xd * c_hand.detach(), atol=1e-6)


def test_rule_names_are_validated():
    with pytest.raises(ValueError, match="unknown norm rule 'layernorm'; valid: ln, grad"):
        fc.LRPConfig(norm="layernorm")
    with pytest.raises(ValueError, match="unknown attention rule"):
        fc.LRPConfig(attention="AH")
    with pytest.raises(ValueError, match="epsilon"):
        fc.LRPConfig(linear="epsilon", epsilon=0)


# --------------------------------------------------------------------------------------------------
# Where rules are installed; query/key norms; the attention rules' gradient factors


def _norm_paths(model, inner: bool) -> list[str]:
    out = []
    for name, mod in model.hf.named_modules():
        if lrp._is_norm(mod) and (name.rsplit(".", 1)[-1] in ("q_norm", "k_norm")) == inner:
            out.append(name)
    return sorted(out)


@pytest.mark.parametrize("config", ALL_ON, ids=ALL_ON_IDS)
def test_rules_are_installed_exactly_where_intended(family, config):
    model = tiny_model(family)
    with fc.apply_rules(model, config) as report:
        pass
    rules = config.resolve(family)
    assert report.config == rules and report.family == family
    outer, inner = _norm_paths(model, False), _norm_paths(model, True)
    assert bool(inner) == (family in QK_NORM_FAMILIES)
    if family in QK_NORM_FAMILIES:
        assert len(inner) == 2 * model.n_layers  # q_norm and k_norm of every layer
    # residual-stream norms get the norm rule, never the query/key norm rule
    assert sorted(report.modules("norm=ln")) == (outer if rules.norm == "ln" else [])
    qk = report.modules(f"qk_norm={rules.qk_norm}")
    if inner and rules.attention != "ah" and rules.qk_norm == "ln":
        assert sorted(qk) == inner
    else:
        assert qk == [] and f"qk_norm={rules.qk_norm}" in report.skipped
        why = report.skipped[f"qk_norm={rules.qk_norm}"]
        assert ("no norms" in why) if not inner else ("attention=ah" in why or why == "plain gradient")
    attns = [f"{model.family.layers}.{l}.{model.family.attn}" for l in range(model.n_layers)]
    assert report.modules(f"attention={rules.attention}") == (attns if rules.attention != "grad" else [])
    acts = [f"{model.family.layers}.{l}.{model.family.mlp}.{model.family.act}" for l in range(model.n_layers)]
    assert report.modules("act=identity") == (acts if rules.act == "identity" else [])
    gated = model.family.gate is not None and rules.gate == "half"
    assert len(report.modules("gate=half")) == (model.n_layers if gated else 0)
    assert lrp.plan_rules(model, config).installed == report.installed
    assert "LRP rules for" in report.summary()


def _norm_grads(model, norm, config):
    """(input, output, input gradient, output gradient) of one norm module under ``config``."""
    kept = {}

    def hook(mod, args, out):
        args[0].retain_grad()
        out.retain_grad()
        kept.update(x=args[0], y=out)

    ids = random_batch().clean
    with fc.apply_rules(model, config):
        handle = norm.register_forward_pre_hook(lambda m, a: (a[0].detach().requires_grad_(True),))
        with lrp.hooks({norm: hook}):
            model.hf(input_ids=ids).logits[:, -1].sum().backward()
        handle.remove()
    return kept["x"].detach(), kept["y"].detach(), kept["x"].grad, kept["y"].grad


@pytest.mark.parametrize("family_name", QK_NORM_FAMILIES)
@pytest.mark.parametrize("attention", ["grad", "uniform"])
def test_query_key_norm_rules_local_gradient(family_name, attention):
    """qk_norm=ln: w/RMS on the input (scale held constant, Gemma's 1 + w kept); qk_norm=grad: the norm's
    own gradient, orthogonal to its input per head — the attention logits do not depend on the scale of
    the raw query, so no relevance flows along it."""
    model = tiny_model(family_name)
    norm = model.layer_module(0, model.family.attn).q_norm
    offset = model.family.norm_weight_offset
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
    x, _, gx, gy = _norm_grads(model, norm, fc.LRPConfig.gradient().with_(attention=attention, qk_norm="ln"))
    rms = (x.float().pow(2).mean(-1, keepdim=True) + eps).sqrt()
    assert torch.allclose(gx, gy * (offset + norm.weight.detach()) / rms, atol=1e-6)
    x, _, gx, gy = _norm_grads(model, norm, fc.LRPConfig.gradient().with_(attention=attention, qk_norm="grad"))
    assert gx.abs().sum() > 0
    ms = x.float().pow(2).mean(-1)
    radial = (x * gx).sum(-1)  # per head vector: zero but for the norm's ε
    assert (radial.abs() <= 2 * eps / (ms + eps) * (x.abs() * gx.abs()).sum(-1) + 1e-9).all()


def test_uniform_rule_quarters_query_and_key_and_halves_value(family):
    """AttnLRP's uniform rule at QKᵀ and A·V: in the last layer (nothing but its MLP downstream) the
    gradients at the projections are ¼, ¼, ½ of the plain ones."""
    model = tiny_model(family)
    last = model.n_layers - 1
    plain = _qkv_grads(model, last, fc.LRPConfig.gradient())
    uniform = _qkv_grads(model, last, fc.LRPConfig.gradient().with_(attention="uniform"))
    for p, u, f in zip(plain, uniform, (0.25, 0.25, 0.5), strict=True):
        assert p.abs().sum() > 0
        assert torch.allclose(u, f * p, atol=1e-7)
