"""Configurations that flow unchanged through every step and into every output. Torch-free.

- :class:`LRPConfig`: which LRP rule each module type gets (fields left ``None`` take the model family's
  defaults from :data:`featurecircuits.registry.FAMILIES`); spelled on the command line as ``--rules``.
- :class:`AttributionConfig`: method, direction, rules, IG steps/rule: attribute → discover → edges →
  evaluate/curve → compare, recorded in every output.
- :class:`AblationConfig`: how circuits are evaluated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, get_args

from .registry import FAMILIES, MethodInfo, method_info, unknown

NormRule = Literal["ln", "grad"]
ActRule = Literal["identity", "grad"]
LinearRule = Literal["zero", "epsilon", "gamma"]
AttentionRule = Literal["grad", "ah", "uniform"]
GateRule = Literal["half", "grad"]
QKNormRule = Literal["ln", "grad"]
RULE_TYPES = {"norm": NormRule, "act": ActRule, "linear": LinearRule, "attention": AttentionRule, "gate": GateRule,
              "qk_norm": QKNormRule}

# The RelP paper's rules (AH-rule off): what a family gets unless its registry entry says otherwise. The
# paper applies the LN-rule to every norm, so also to per-head query/key norms (``qk_norm``) where a family
# has them; see docs/rules.md for why that default is wrong without the AH-rule and what replaces it.
PAPER_RULES = {"norm": "ln", "act": "identity", "linear": "zero", "attention": "grad", "gate": "half",
               "qk_norm": "ln"}
GRADIENT_RULES = {"norm": "grad", "act": "grad", "linear": "zero", "attention": "grad", "gate": "grad",
                  "qk_norm": "grad"}
RULE_SETS = ("default", "gradient", "paper")


def qk_norm_for(attention: str) -> str:
    """The rule at query/key norms that keeps the query/key path consistent with the attention rule."""
    return "ln" if attention == "uniform" else "grad"


@dataclass(frozen=True)
class LRPConfig:
    """Which rule each module type gets; ``None`` means the model family's default.

    ``LRPConfig()`` is the family's default set; ``LRPConfig(attention="ah")`` the same with the AH-rule;
    ``LRPConfig.gradient()`` turns every rule off (RelP then equals AtP).

    - ``norm``: LayerNorm/RMSNorm on the residual stream (pre-/post-attention, pre-/post-MLP, final).
    - ``qk_norm``: norms inside the attention's query/key path (Gemma-3's and Qwen3's per-head ``q_norm`` /
      ``k_norm``); only the attention pattern depends on them, so their rule only matters when gradient
      flows through the pattern (``attention`` ``grad`` or ``uniform``; under ``ah`` they are skipped).
    - ``attention``: ``grad`` (softmax and both matmuls with their plain gradient), ``ah`` (AH-rule / CP-LRP:
      the pattern held constant, query and key detached), ``uniform`` (AttnLRP: softmax with its gradient,
      the uniform rule at both bilinear matmuls QKᵀ and A·V — query and key gradients ÷ 4, value ÷ 2).
    """

    norm: NormRule | None = None
    act: ActRule | None = None
    linear: LinearRule | None = None
    attention: AttentionRule | None = None
    gate: GateRule | None = None
    qk_norm: QKNormRule | None = None
    epsilon: float = 1e-6
    gamma: float = 0.25

    def __post_init__(self):
        for name, allowed in RULE_TYPES.items():
            value = getattr(self, name)
            if value is not None and value not in get_args(allowed):
                raise ValueError(f"unknown {name} rule {value!r}; valid: {', '.join(get_args(allowed))}")
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"epsilon must be a positive finite number, got {self.epsilon}")
        if not (isinstance(self.gamma, (int, float)) and self.gamma >= 0 and math.isfinite(self.gamma)):
            raise ValueError(f"gamma must be a non-negative finite number, got {self.gamma}")

    @classmethod
    def gradient(cls) -> LRPConfig:
        return cls(**GRADIENT_RULES)

    @classmethod
    def paper(cls) -> LRPConfig:
        return cls(**PAPER_RULES)

    def with_(self, **changes) -> LRPConfig:
        return replace(self, **changes)

    def resolve(self, family: str) -> LRPConfig:
        """Every rule explicit: unset ones from the family's defaults (themselves over the paper's).

        An unset ``qk_norm`` that the family does not fix follows the attention rule: the LN-rule only
        under ``uniform`` (AttnLRP, where the uniform rule at QKᵀ makes the query/key path conservative),
        the plain gradient otherwise (docs/rules.md)."""
        if family not in FAMILIES:
            raise unknown("model family", family, FAMILIES)
        base = {**PAPER_RULES, **FAMILIES[family].rules}
        resolved = {k: getattr(self, k) or base[k] for k in RULE_TYPES}
        if self.qk_norm is None and "qk_norm" not in FAMILIES[family].rules:
            resolved["qk_norm"] = qk_norm_for(resolved["attention"])
        return replace(self, **resolved)

    @property
    def is_resolved(self) -> bool:
        return all(getattr(self, k) is not None for k in RULE_TYPES)

    @property
    def is_gradient(self) -> bool:
        return all(getattr(self, k) == v for k, v in GRADIENT_RULES.items())

    @classmethod
    def parse(cls, spec: str) -> LRPConfig:
        """``default`` | ``gradient`` | ``paper``, optionally followed by ``key=value`` overrides:
        ``attention=ah,norm=ln``, ``gradient,gate=half``, ``linear=epsilon,epsilon=1e-4``, ``qk_norm=grad``."""
        items = [s.strip() for s in str(spec).split(",")]
        if not items or any(not s for s in items):
            raise ValueError(f"empty item in rules {spec!r}")
        base: dict = {}
        if "=" not in items[0]:
            name = items.pop(0)
            if name not in RULE_SETS:
                raise unknown("rule set", name, RULE_SETS)
            base = {"gradient": GRADIENT_RULES, "paper": PAPER_RULES}.get(name, {})
        overrides = {}
        valid = [*RULE_TYPES, "epsilon", "gamma"]
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or key not in valid:
                raise ValueError(f"rules item {item!r} is not key=value with key one of {', '.join(valid)} "
                                 f"(a rule set name — {', '.join(RULE_SETS)} — may only come first)")
            if key in ("epsilon", "gamma"):
                try:
                    value = float(value)
                except ValueError:
                    raise ValueError(f"rules item {item!r}: {key} must be a number") from None
            overrides[key] = value
        return cls(**{**base, **overrides})

    @property
    def spec(self) -> str:
        """The canonical ``--rules`` spelling of this config (``parse(spec)`` gives it back)."""
        parts = [f"{k}={getattr(self, k)}" for k in RULE_TYPES if getattr(self, k) is not None]
        parts += [f"{k}={getattr(self, k)}" for k in ("epsilon", "gamma")
                  if getattr(self, k) != next(f.default for f in fields(self) if f.name == k)]
        return ",".join(parts) or "default"


Direction = Literal["noising", "denoising"]
IGRule = Literal["left", "midpoint"]


@dataclass(frozen=True)
class AttributionConfig:
    """How nodes (and edges) are scored. The same object goes from ``attribute`` to every output."""

    method: str = "relp"
    direction: Direction = "noising"
    lrp: LRPConfig = LRPConfig()  # used by methods whose backward runs with rules (relp)
    ig_steps: int = 10
    ig_rule: IGRule = "left"
    max_batch: int = 256  # sequences per forward for AP and IG
    reuse_prefix: bool = True  # AP runs patches at position t from t on, over the cached unpatched prefix
    # AP runs patches of layer l from layer l up, over the unpatched run's hidden state (and cuts each prefix
    # cache from one cache of the whole unpatched run where the cache allows it); False: every layer, as before
    reuse_layers: bool = True

    def __post_init__(self):
        method_info(self.method)
        if self.direction not in get_args(Direction):
            raise unknown("direction", self.direction, get_args(Direction))
        if self.ig_rule not in get_args(IGRule):
            raise unknown("ig_rule", self.ig_rule, get_args(IGRule))
        if self.lrp is None:
            object.__setattr__(self, "lrp", LRPConfig())
        if not isinstance(self.lrp, LRPConfig):
            raise ValueError(f"lrp must be an LRPConfig, got {type(self.lrp).__name__}")
        for name in ("ig_steps", "max_batch"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def info(self) -> MethodInfo:
        return method_info(self.method)

    def with_(self, **changes) -> AttributionConfig:
        return replace(self, **changes)

    def resolve(self, family: str) -> AttributionConfig:
        """The rules made explicit for a model family (what is recorded in outputs)."""
        return replace(self, lrp=self.lrp.resolve(family))

    def to_dict(self) -> dict:
        """What outputs record: options that do not affect this method are left out (None)."""
        uses_rules, is_ig = self.info.uses_rules, self.method == "ig"
        return {"method": self.method, "direction": self.direction,
                "rules": self.lrp.spec if uses_rules else None,
                "lrp": asdict(self.lrp) if uses_rules else None,
                "ig_steps": self.ig_steps if is_ig else None, "ig_rule": self.ig_rule if is_ig else None}

    @classmethod
    def from_dict(cls, data: dict) -> AttributionConfig:
        lrp = LRPConfig(**data["lrp"]) if data.get("lrp") else LRPConfig()
        ig = {k: data[k] for k in ("ig_steps", "ig_rule") if data.get(k) is not None}
        return cls(method=data["method"], direction=data.get("direction", "noising"), lrp=lrp, **ig)


ABLATIONS = ("mean", "zero", "resample")
ERROR_HANDLING = ("ablate", "keep", "remove")


@dataclass(frozen=True)
class AblationConfig:
    """How nodes outside a circuit are ablated when it is evaluated."""

    ablation: Literal["mean", "zero", "resample"] = "mean"
    errors: Literal["ablate", "keep", "remove"] = "ablate"  # error nodes: like features / never / always zero
    start_layer: int = 0  # submodules of earlier layers are never ablated (Sparse Feature Circuits: 2)
    include_embed: bool = True  # Sparse Feature Circuits leaves the embedding out
    seed: int = 0

    def __post_init__(self):
        if self.ablation not in ABLATIONS:
            raise unknown("ablation", self.ablation, ABLATIONS)
        if self.errors not in ERROR_HANDLING:
            raise unknown("errors", self.errors, ERROR_HANDLING)
        if not isinstance(self.start_layer, int) or isinstance(self.start_layer, bool) or self.start_layer < 0:
            raise ValueError(f"start_layer must be a non-negative integer, got {self.start_layer!r}")
