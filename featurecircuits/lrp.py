"""LRP rules for Relevance Patching, applied to a real Hugging Face model at forward time.

Every rule is *value-preserving*: a forward hook returns ``out.detach() + (g - g.detach())``, whose value
is exactly the module's own output while its gradient is that of ``g``, the rule's expression. So logits
are bit-identical with rules on, and a backward pass yields the LRP propagation coefficients.

Rules (per module type):
- norm:      "ln"       LayerNorm/RMSNorm with the normalising scale held constant (LN-rule)
- act:       "identity" elementwise nonlinearity with act(x)/x held constant (identity rule)
- linear:    "zero" (plain gradient), "epsilon", "gamma"
- attention: "ah"       attention pattern held constant (AH-rule / CP-LRP); "uniform" (AttnLRP: uniform rule at
                        QKᵀ and A·V); default "grad" (softmax and matmuls with their plain gradient)
- gate:      "half"     gated MLP product a*b: half the gradient to each factor (half-rule)
- qk_norm:   "ln"/"grad" norms inside the query/key path (Gemma-3, Qwen3 per-head q_norm/k_norm); see
                        docs/rules.md for the principle and the measurements behind each family's default
Any rule can be set to "grad" (or "zero" for linear) to keep the plain gradient.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

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


def param(mod: nn.Module, name: str) -> torch.Tensor | None:
    """A module's parameter as its forward used it. Under accelerate's offloading the weights are on the
    ``meta`` device again once the forward returns (when rule hooks run), so take them from the offload map."""
    p = getattr(mod, name, None)
    if p is None or p.device.type != "meta":
        return p
    hook = getattr(mod, "_hf_hook", None)
    weights = getattr(hook, "weights_map", None)
    if weights is None or name not in weights:
        raise RuntimeError(f"{type(mod).__name__}.{name} is on the meta device and not in an offload map")
    return weights[name].to(hook.execution_device)


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
        w = param(mod, "weight")
        if w is not None:
            g = g * (weight_offset + w.float())
        b = param(mod, "bias")
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
        return param(mod, "weight"), param(mod, "bias")
    return param(mod, "weight").t(), param(mod, "bias")


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


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` itself in the forward pass; its gradient multiplied by ``factor`` in the backward."""
    return keep_value(x, x * factor)


# The gradient factors at the attention function's (query, key, value) per attention rule: AH-rule / CP-LRP
# cuts query and key (None = detached); AttnLRP's uniform rule splits the relevance of each bilinear matmul
# equally between its operands — A·V: ½ to the pattern (so to query and key), ½ to the value; QKᵀ: ½ each
# to query and key — so query and key get ¼ and the value ½.
ATTENTION_FACTORS = {"ah": (None, None, 1.0), "uniform": (0.25, 0.25, 0.5)}


@contextmanager
def _attention_rule(model, rule: str) -> Iterator[None]:
    """Call the model's attention function with query, key and value carrying the rule's gradient factors.

    The function sees values bit-identical to its inputs, so the output is unchanged for every
    implementation (eager, sdpa, GQA, soft-capping, sliding windows). Eager attention is looked up as a
    module global at call time, so it is swapped in the modeling module; other implementations in the
    registry.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    fq, fk, fv = ATTENTION_FACTORS[rule]

    def ruled(t, f):
        if f is None:
            return t.detach()
        return t if f == 1.0 else scale_gradient(t, f)

    attn = model.layer_module(0, model.family.attn)
    modeling = sys.modules[type(attn).__module__]
    impl = getattr(model.config, "_attn_implementation", None) or "eager"

    def wrap(orig):
        def attention(module, query, key, value, *args, **kwargs):
            return orig(module, ruled(query, fq), ruled(key, fk), ruled(value, fv), *args, **kwargs)

        return attention

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


@dataclass
class RulesReport:
    """What :func:`apply_rules` installed where, and what it skipped and why.

    ``installed`` maps a rule (``"norm=ln"``, ``"qk_norm=grad"``, ``"attention=ah"``, ...) to the dotted
    module paths it acts on (for attention rules: the attention modules whose function is wrapped);
    ``skipped`` maps a rule to the reason it acts nowhere (no such module in this family, the plain
    gradient chosen, or made moot by another rule).
    """

    config: LRPConfig
    family: str
    installed: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def modules(self, rule: str) -> list[str]:
        return self.installed.get(rule, [])

    def summary(self) -> str:
        lines = [f"LRP rules for {self.family}: {self.config.spec}"]
        for rule, mods in self.installed.items():
            lines.append(f"  {rule}: {len(mods)} module(s), e.g. {mods[0]}")
        for rule, why in self.skipped.items():
            lines.append(f"  {rule}: skipped ({why})")
        return "\n".join(lines)


def qk_norms(model) -> set[nn.Module]:
    """Norms inside the attention modules (Gemma-3's and Qwen3's per-head ``q_norm`` / ``k_norm``): they act
    on queries and keys, so only the attention pattern depends on them."""
    found = set()
    for l in range(model.n_layers):
        found |= {m for m in model.layer_module(l, model.family.attn).modules() if _is_norm(m)}
    return found


def plan_rules(model, config: LRPConfig | None = None) -> RulesReport:
    """The rules :func:`apply_rules` would install for ``model`` (a featurecircuits Model), without hooks."""
    return _plan(model, config)[0]


def _plan(model, config):
    config = (config or LRPConfig()).resolve(model.family.name)
    report = RulesReport(config, model.family.name)
    names = {m: n for n, m in model.hf.named_modules()}
    forward: dict[nn.Module, Callable] = {}

    def install(rule: str, mods, hook) -> None:
        for mod in mods:
            if hook is not None:
                forward[mod] = hook
            report.installed.setdefault(rule, []).append(names[mod])

    if config.linear != "zero":
        rule = epsilon_rule(config.epsilon) if config.linear == "epsilon" else gamma_rule(config.gamma)
        install(f"linear={config.linear}", [m for m in model.hf.modules() if _is_linear(m)], rule)
    else:
        report.skipped["linear=zero"] = "the 0-rule is the plain gradient"
    inner = qk_norms(model)
    outer = [m for m in model.hf.modules() if _is_norm(m) and m not in inner]
    if config.norm == "ln":
        install("norm=ln", outer, ln_rule(model.family.norm_weight_offset))
    else:
        report.skipped["norm=grad"] = "plain gradient"
    qk_rule = f"qk_norm={config.qk_norm}"
    if not inner:
        report.skipped[qk_rule] = "this family has no norms in the query/key path"
    elif config.attention == "ah":
        report.skipped[qk_rule] = "attention=ah detaches query and key, so no gradient reaches these norms"
    elif config.qk_norm == "ln":
        install(qk_rule, sorted(inner, key=names.get), ln_rule(model.family.norm_weight_offset))
    else:
        report.skipped[qk_rule] = "plain gradient"
    gate_hooks = []
    acts, gates = [], []
    for l in range(model.n_layers):
        mlp = model.layer_module(l, model.family.mlp)
        act = getattr(mlp, model.family.act)
        acts.append(act)
        if model.family.gate is not None:
            up, down = (getattr(mlp, n) for n in model.family.gate)
            gates.append(down)
            if config.gate == "half":
                gate_hooks.append((act, up, down, half_rule_hooks()))
    if config.act == "identity":
        install("act=identity", acts, identity_rule(model.activation_name()))
    else:
        report.skipped["act=grad"] = "plain gradient"
    if model.family.gate is None:
        report.skipped[f"gate={config.gate}"] = "this family's MLP has no multiplicative gate"
    elif config.gate == "half":
        install("gate=half", gates, None)  # the product entering each down projection
    else:
        report.skipped["gate=grad"] = "plain gradient"
    attns = [model.layer_module(l, model.family.attn) for l in range(model.n_layers)]
    if config.attention in ATTENTION_FACTORS:
        install(f"attention={config.attention}", attns, None)
    else:
        report.skipped["attention=grad"] = "softmax and both matmuls with their plain gradient"
    return report, forward, gate_hooks


@contextmanager
def apply_rules(model, config: LRPConfig | None = None) -> Iterator[RulesReport]:
    """Switch the LRP rules on for forwards run inside the block (``model`` is a featurecircuits Model);
    yields a :class:`RulesReport` (its ``config`` is the resolved rule set)."""
    report, forward, gate_hooks = _plan(model, config)
    with ExitStack() as stack:
        stack.enter_context(hooks(forward))
        # Gate stash hooks go after the act rule, so they see the act output with its rule applied.
        for act, up, down, (on_act, on_up, on_down) in gate_hooks:
            stack.enter_context(hooks({act: on_act, up: on_up}, {down: on_down}))
        if report.config.attention in ATTENTION_FACTORS:
            stack.enter_context(_attention_rule(model, report.config.attention))
        yield report
