"""LRP rules for Relevance Patching, applied to a real Hugging Face model at forward time.

Every rule is *value-preserving*: a forward hook returns ``out.detach() + (g - g.detach())``, whose value
is exactly the module's own output while its gradient is that of ``g``, the rule's expression. So logits
are bit-identical with rules on, and a backward pass yields the LRP propagation coefficients.

Rules (per module type):
- norm:      "ln"       LayerNorm/RMSNorm with the normalising scale held constant (LN-rule)
- act:       "identity" elementwise nonlinearity with act(x)/x held constant (identity rule)
- linear:    "zero" (plain gradient), "epsilon", "gamma"
- attention: "ah"       attention pattern held constant (AH-rule); default "grad" (off)
- gate:      "half"     gated MLP product a*b: half the gradient to each factor (half-rule)
Any rule can be set to "grad" (or "zero" for linear) to keep the plain gradient.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from .config import LRPConfig
from .registry import FAMILIES

# One table: the default rules of each family, resolved from the family registry.
FAMILY_RULES: dict[str, LRPConfig] = {name: LRPConfig().resolve(name) for name in FAMILIES}


def default_rules(family: str) -> LRPConfig:
    return LRPConfig().resolve(family)


# --------------------------------------------------------------------------------------------------
# Value-preserving rule expressions. Each takes the module input x and output, returns the new output.


def keep_value(out: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Forward value of ``out``, backward of ``g`` (``g - g.detach()`` is exactly zero)."""
    g = g.to(out.dtype)
    return out.detach() + (g - g.detach())


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def _stabilise(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * _sign(z)


def ln_rule(weight_offset: float = 0.0) -> Callable:
    """LN-rule for LayerNorm and RMSNorm: the 1/σ (or 1/RMS) factor is constant, centring is not."""

    def hook(mod: nn.Module, args, out):
        x = args[0].float()
        eps = float(getattr(mod, "eps", getattr(mod, "variance_epsilon", 1e-5)))
        if isinstance(mod, nn.LayerNorm) or type(mod).__name__.endswith("LayerNorm"):
            xc = x - x.mean(-1, keepdim=True)
            scale = (xc.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
        else:  # RMSNorm: no centring
            xc = x
            scale = (x.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
        g = xc * scale.detach()
        w = getattr(mod, "weight", None)
        if w is not None:
            g = g * (weight_offset + w.float())
        b = getattr(mod, "bias", None)
        if b is not None:
            g = g + b.float()
        return keep_value(out, g)

    return hook


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def identity_factor(act_name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """act(x)/x in closed form where one exists; a sign-aware stabilised division otherwise."""
    name = act_name.lower()
    if name == "gelu":
        return lambda x: 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python_tanh", "gelu_tanh"):
        return lambda x: 0.5 * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x.pow(3))))
    if name in ("silu", "swish"):
        return torch.sigmoid
    if name == "relu":
        return lambda x: (x > 0).to(x.dtype)
    if name in ("linear", "identity"):
        return torch.ones_like
    return None  # caller divides


def identity_rule(act_name: str = "unknown") -> Callable:
    """Identity rule: ``x * (act(x)/x).detach()``, so relevance passes the nonlinearity unchanged."""
    factor = identity_factor(act_name)

    def hook(mod, args, out):
        x = args[0].float()
        if factor is not None:
            r = factor(x)
        else:
            r = out.float() / _stabilise(x, 1e-6)
        return keep_value(out, x * r.detach())

    return hook


def _linear_parts(mod: nn.Module):
    """(weight as out×in, bias) for nn.Linear and GPT-2's Conv1D (which stores in×out)."""
    if isinstance(mod, nn.Linear):
        return mod.weight, mod.bias
    return mod.weight.t(), mod.bias


def epsilon_rule(eps: float) -> Callable:
    """ε-rule: the coefficient is scaled by z / (z + ε·sign z)."""

    def hook(mod, args, z):
        s = (z.float() / _stabilise(z.float(), eps)).detach()
        return keep_value(z, z.float() * s)

    return hook


def gamma_rule(gamma: float, eps: float = 1e-6) -> Callable:
    """γ-rule: backward through W + γW⁺, normalised so the layer's relevance is conserved."""

    def hook(mod, args, z):
        x = args[0].float()
        w, b = _linear_parts(mod)
        w = w.float()
        zg = x @ (w + gamma * w.clamp(min=0)).t()
        if b is not None:
            b = b.float()
            zg = zg + b + gamma * b.clamp(min=0)
        return keep_value(z, zg * (z.float() / _stabilise(zg, eps)).detach())

    return hook


def half_rule_hooks() -> tuple[Callable, Callable, Callable]:
    """Hooks for a gated MLP ``down(act(gate(x)) * up(x))``: the product's gradient is split in half.

    Returns (act forward hook, up forward hook, down forward pre-hook); the first two stash the factors,
    the third replaces the product entering the down projection with its half-rule twin.
    """
    stash: dict[str, torch.Tensor] = {}

    def on_act(mod, args, out):
        stash["a"] = out

    def on_up(mod, args, out):
        stash["b"] = out

    def on_down(mod, args):
        h = args[0]
        a, b = stash.pop("a", None), stash.pop("b", None)
        if a is None or b is None or a.shape != h.shape or b.shape != h.shape:
            raise RuntimeError("half-rule: could not find the two factors of the gated MLP product")
        g = 0.5 * (a * b.detach()) + 0.5 * (a.detach() * b)
        return (keep_value(h, g), *args[1:])

    return on_act, on_up, on_down


# --------------------------------------------------------------------------------------------------
# Application


@contextmanager
def hooks(forward: dict[nn.Module, Callable] | None = None, pre: dict[nn.Module, Callable] | None = None):
    """Register forward hooks (and pre-hooks) for the duration of the block; always removed."""
    handles = []
    try:
        for mod, fn in (forward or {}).items():
            handles.append(mod.register_forward_hook(fn))
        for mod, fn in (pre or {}).items():
            handles.append(mod.register_forward_pre_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def _is_norm(mod: nn.Module) -> bool:
    name = type(mod).__name__
    return isinstance(mod, nn.LayerNorm) or name.endswith("RMSNorm") or name.endswith("LayerNorm")


def _is_linear(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"


@contextmanager
def _detached_attention(model) -> Iterator[None]:
    """AH-rule: call the model's attention function with query and key detached.

    The pattern softmax(QKᵀ) is then a constant for autograd while the output stays bit-identical, for
    every implementation (eager, sdpa, GQA, soft-capping). Eager attention is looked up as a module global
    at call time, so it is swapped in the modeling module; other implementations in the registry.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attn = model.layer_module(0, model.family.attn)
    modeling = sys.modules[type(attn).__module__]
    impl = getattr(model.config, "_attn_implementation", None) or "eager"

    def wrap(orig):
        def detached(module, query, key, value, *args, **kwargs):
            return orig(module, query.detach(), key.detach(), value, *args, **kwargs)

        return detached

    if impl == "eager":
        orig = modeling.eager_attention_forward
        modeling.eager_attention_forward = wrap(orig)
        try:
            yield
        finally:
            modeling.eager_attention_forward = orig
    else:
        orig = ALL_ATTENTION_FUNCTIONS[impl]
        ALL_ATTENTION_FUNCTIONS[impl] = wrap(orig)
        try:
            yield
        finally:
            ALL_ATTENTION_FUNCTIONS[impl] = orig


@contextmanager
def apply_rules(model, config: LRPConfig | None = None) -> Iterator[LRPConfig]:
    """Switch the LRP rules on for forwards run inside the block (``model`` is a featurecircuits Model)."""
    config = (config or LRPConfig()).resolve(model.family.name)
    forward: dict[nn.Module, Callable] = {}
    with ExitStack() as stack:
        if config.linear != "zero":
            rule = epsilon_rule(config.epsilon) if config.linear == "epsilon" else gamma_rule(config.gamma)
            for mod in model.hf.modules():
                if _is_linear(mod):
                    forward[mod] = rule
        if config.norm == "ln":
            for mod in model.hf.modules():
                if _is_norm(mod):
                    forward[mod] = ln_rule(model.family.norm_weight_offset)
        gate_hooks = []
        for l in range(model.n_layers):
            mlp = model.layer_module(l, model.family.mlp)
            act = getattr(mlp, model.family.act)
            if config.act == "identity":
                forward[act] = identity_rule(model.activation_name())
            if config.gate == "half" and model.family.gate is not None:
                up, down = (getattr(mlp, n) for n in model.family.gate)
                gate_hooks.append((act, up, down, half_rule_hooks()))
        stack.enter_context(hooks(forward))
        # Gate stash hooks go after the act rule, so they see the act output with its rule applied.
        for act, up, down, (on_act, on_up, on_down) in gate_hooks:
            stack.enter_context(hooks({act: on_act, up: on_up}, {down: on_down}))
        if config.attention == "ah":
            stack.enter_context(_detached_attention(model))
        yield config
