"""The token side of a feature, read from the weights (no corpus).

**Output side** (what a feature promotes and suppresses): its decoder vector taken straight to the logits
through the *direct path* only, ``W_U · (w_norm ⊙ d_i)``: the final norm's weight (``1 + w`` for Gemma's
RMSNorm, the family's ``norm_weight_offset``) then the unembedding. The norm's input-dependent scale and
centring are ignored (a positive factor per token, which leaves the ranking of tokens unchanged for
RMSNorm), and so are all later layers the vector passes through and Gemma-2's logit softcap (monotone).
Values are logits per unit of feature activation under that approximation.

**Input side** (which tokens drive a feature from the embedding): ``E · e_i``, the token embedding matrix
against the feature's encoder row, for dictionaries on ``embed`` (and, as a direct-path approximation that
ignores attention and the MLP, on ``resid_0``). The encoder bias and any pre-encoder bias shift every token
equally, so the ranking is exact for ReLU-family dictionaries on ``embed`` (GPT-2's position embeddings
aside: they are part of its embed output and left out here).
"""

from __future__ import annotations

import torch

__all__ = ["INPUT_SIDE_SUBMODULES", "final_norm_weight", "input_tokens", "output_tokens"]

INPUT_SIDE_SUBMODULES = ("embed", "resid_0")
_FINAL_NORMS = ("final_layer_norm", "ln_f", "norm")


def final_norm_weight(model) -> torch.Tensor | None:
    """The final norm's effective per-dimension weight (with Gemma's ``1 +``), or None when it has none."""
    base = getattr(model.hf, "base_model", model.hf)
    for name in _FINAL_NORMS:
        norm = getattr(base, name, None)
        weight = getattr(norm, "weight", None) if norm is not None else None
        if isinstance(weight, torch.Tensor):
            return weight.detach().float() + float(model.family.norm_weight_offset)
    return None


@torch.no_grad()
def output_tokens(model, directions: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """(top values, top ids, bottom values, bottom ids), each (features, n), of the direct-path logits of
    ``directions`` (features, d_model): decoder rows."""
    unembed = model.hf.get_output_embeddings().weight.detach()
    v = directions.to(unembed.device, torch.float32)
    w = final_norm_weight(model)
    if w is not None:
        v = v * w.to(v.device)
    logits = v @ unembed.float().T  # (features, vocab)
    n = min(n, logits.shape[1])
    top = logits.topk(n, dim=1)
    bottom = logits.topk(n, dim=1, largest=False)
    return top.values.cpu(), top.indices.cpu(), bottom.values.cpu(), bottom.indices.cpu()


@torch.no_grad()
def input_tokens(model, encoder_rows: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, ids), each (features, n): the tokens whose embedding most excites each encoder row."""
    embed = model.hf.get_input_embeddings().weight.detach()
    scores = encoder_rows.to(embed.device, torch.float32) @ embed.float().T
    top = scores.topk(min(n, scores.shape[1]), dim=1)
    return top.values.cpu(), top.indices.cpu()
