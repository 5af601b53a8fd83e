"""TransformerLens hook names (the names SAELens and Gemma Scope SAEs are trained on) → our submodules.

==============================  ====================================================================
hook                            submodule
==============================  ====================================================================
``blocks.L.hook_resid_post``    ``resid_L`` (the output of decoder layer L)
``blocks.L.hook_resid_pre``     ``resid_{L-1}`` for L ≥ 1 (what enters layer L is what left layer L-1);
                                for L = 0 ``embed`` where our embedding node is exactly what enters
                                layer 0 (see below)
``hook_embed``                  ``embed`` where our embedding node is exactly TransformerLens's
                                ``hook_embed`` (see below)
``blocks.L.hook_attn_out``      ``attn_L`` (not Gemma-2/3: there the hook is after the post-attention norm)
``blocks.L.hook_mlp_out``       ``mlp_L`` (not Gemma-2/3: there the hook is after the post-MLP norm)
``blocks.L.attn.hook_z``        ``z_L``, the input of the attention output projection (heads concatenated,
                                head-major: SAELens's ``reshape_activations="hook_z"`` flattening), every
                                family
==============================  ====================================================================

The embedding differs per family. TransformerLens's ``hook_embed`` is the token embedding alone (for Gemma
with the √d scale folded into ``W_E``), and ``blocks.0.hook_resid_pre`` adds GPT-2's position embeddings.
Our ``embed`` node is the output of :attr:`FamilyInfo.embed`:

- GPT-NeoX/Pythia, Llama, Qwen2: ``embed_in``/``embed_tokens``, the token embedding; no position embedding
  is added (rotary), so ``hook_embed`` = ``blocks.0.hook_resid_pre`` = ``embed``.
- GPT-2: ``transformer.drop``'s output, token + position embedding = ``blocks.0.hook_resid_pre`` only;
  a ``hook_embed`` SAE (tokens without positions) has no counterpart and is refused.
- Gemma-2/3: ``embed_tokens`` is transformers' scaled embedding (its output is multiplied by √d, the
  ``embed_scale`` buffer), equal to TransformerLens's ``hook_embed`` and ``blocks.0.hook_resid_pre``. With
  an older transformers whose ``embed_tokens`` is a plain ``nn.Embedding`` (scaled later, in the model's
  forward) neither hook has a counterpart and both are refused.

Where an SAE's config also names a Hugging Face module path (SAELens's ``hf_hook_name``) that is exactly one
of our submodule paths, that path decides.
"""

from __future__ import annotations

import logging
import re

from ..models import Model

log = logging.getLogger(__name__)

HOOK_KINDS = ("hook_embed", "hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "attn.hook_z")
_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_resid_mid|hook_attn_out|hook_mlp_out|"
                         r"attn\.hook_z|hook_attn_in|hook_mlp_in|ln\d\.hook_normalized|mlp\.hook_post|"
                         r"mlp\.hook_pre|attn\.hook_result)$")
_POST_NORM_FAMILIES = ("gemma2", "gemma3")  # attn/mlp outputs pass through a norm before the residual add


def embed_hooks(model: Model) -> tuple[str, ...]:
    """The hook names whose activation is exactly our ``embed`` node, for this model."""
    family = model.family.name
    if family == "gpt2":
        return ("blocks.0.hook_resid_pre",)
    if family in _POST_NORM_FAMILIES:
        if hasattr(model.module(model.submodule("embed")), "embed_scale"):
            return ("hook_embed", "blocks.0.hook_resid_pre")
        return ()
    return ("hook_embed", "blocks.0.hook_resid_pre")


def submodule_for_hook(hook: str, model: Model, *, hf_hook: str | None = None, where: str = "") -> str:
    """Our submodule name for a TransformerLens hook name, or a ValueError saying why there is none."""
    at = f"{where}: " if where else ""
    if hf_hook:
        for sub in model.submodules:
            if sub.path == hf_hook:
                return sub.name
    hook = str(hook or "")
    if not hook:
        raise ValueError(f"{at}the SAE's config names no hook (hook_name); featurecircuits needs it to know where "
                         "the SAE reads. Add metadata.hook_name (e.g. blocks.3.hook_resid_post) to cfg.json")
    family = model.family.name
    if hook == "hook_embed" or hook == "blocks.0.hook_resid_pre":
        if hook in embed_hooks(model):
            return "embed"
        if family == "gpt2" and hook == "hook_embed":
            why = ("GPT-2's embedding node (transformer.drop) is token + position embedding, i.e. "
                   "blocks.0.hook_resid_pre; hook_embed (tokens only) has no exact counterpart")
        else:
            why = (f"this {family} model's embed_tokens output is not scaled by √d as TransformerLens's hook_embed "
                   "and blocks.0.hook_resid_pre are (update transformers to ≥ 5, whose Gemma embedding applies "
                   "the scale itself)")
        raise ValueError(f"{at}hook {hook!r} has no exact counterpart in this model: {why}")
    m = _BLOCK_HOOK.match(hook)
    if m is None:
        raise ValueError(f"{at}unknown hook name {hook!r}; featurecircuits reads SAEs on hook_embed, "
                         "blocks.L.hook_resid_pre, blocks.L.hook_resid_post, blocks.L.hook_attn_out, "
                         "blocks.L.hook_mlp_out and blocks.L.attn.hook_z")
    layer, kind = int(m.group(1)), m.group(2)
    if layer >= model.n_layers:
        raise ValueError(f"{at}hook {hook!r} is on layer {layer}, but the model has {model.n_layers} layers "
                         f"(0–{model.n_layers - 1}); is the SAE for another model?")
    if kind in ("hook_attn_out", "hook_mlp_out") and family in _POST_NORM_FAMILIES:
        part = "attn" if kind == "hook_attn_out" else "mlp"
        raise ValueError(f"{at}hook {hook!r}: in TransformerLens's {family} this is the {part} output *after* "
                         f"its post-{part} RMSNorm, while our {part}_{layer} is the output before it; no "
                         "submodule matches exactly, so the SAE is refused")
    return nominal_submodule(hook, where=where)


def nominal_submodule(hook: str, *, where: str = "") -> str:
    """The submodule a hook name means, without a model's family-specific checks (the memory planner reads
    configs only): ``blocks.3.hook_resid_post`` → ``resid_3``, ``blocks.3.attn.hook_z`` → ``z_3``."""
    if hook in ("hook_embed", "blocks.0.hook_resid_pre"):
        return "embed"
    m = _BLOCK_HOOK.match(str(hook or ""))
    names = {"hook_resid_post": "resid", "hook_attn_out": "attn", "hook_mlp_out": "mlp", "attn.hook_z": "z"}
    if m is not None and m.group(2) == "hook_resid_pre":
        return f"resid_{int(m.group(1)) - 1}"
    if m is None or m.group(2) not in names:
        raise ValueError(f"{where + ': ' if where else ''}hook {hook!r} has no featurecircuits submodule; supported "
                         "hooks: hook_embed, blocks.L.hook_resid_pre, blocks.L.hook_resid_post, "
                         "blocks.L.hook_attn_out, blocks.L.hook_mlp_out, blocks.L.attn.hook_z")
    return f"{names[m.group(2)]}_{m.group(1)}"


def assign(found, model: Model, part: str) -> list[tuple[str, object, str]]:
    """``(hook, dictionary, where)`` of one spec part → ``(submodule, dictionary, where)``; two SAEs of the part
    on one submodule are an error naming both and how to select one."""
    out: dict[str, tuple[str, object, str]] = {}
    for hook, ae, where in found:
        name = submodule_for_hook(hook, model, hf_hook=getattr(ae, "hf_hook_name", None), where=where)
        if name in out:
            raise ValueError(f"two SAEs map to {name}: {out[name][2]} and {where} (hook {hook}); keep one, e.g. "
                             f"select it with {part}@<part of its name>")
        log.info("SAE %s (hook %s) → %s", where, hook, name)
        out[name] = (name, ae, where)
    return list(out.values())


def hook_for_submodule(name: str, model: Model) -> str:
    """The TransformerLens hook name an SAE for our submodule ``name`` is written with (for converters)."""
    sub = model.submodule(name)
    if sub.kind == "embed":
        hooks = embed_hooks(model)
        if not hooks:
            raise ValueError(f"this {model.family.name} model's embed node has no TransformerLens hook counterpart")
        return hooks[0]
    if sub.kind == "resid":
        return f"blocks.{sub.layer}.hook_resid_post"
    if sub.kind == "z":
        return f"blocks.{sub.layer}.attn.hook_z"
    if model.family.name in _POST_NORM_FAMILIES:
        raise ValueError(f"{name} of a {model.family.name} model has no TransformerLens hook counterpart "
                         "(TransformerLens reads it after the post-norm)")
    return f"blocks.{sub.layer}.hook_{sub.kind}_out"
