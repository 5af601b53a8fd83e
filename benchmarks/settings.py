"""Benchmark settings: a model, its dictionaries and a batch, built offline.

The Pythia-70M-shaped setting uses random weights and random dictionaries. Random encoders with one
shared bias fire thousands of features per token at some submodules and none at others, which is nothing
like a trained dictionary (tens to about a hundred per token). So each dictionary is *calibrated*: its
pre-activations are measured on the model's own activations over a calibration batch (random tokens, a
different seed from the benchmark batch), and each feature's encoder bias is shifted so that the feature
fires on ``target_l0 / width`` of the calibration tokens. The mean L0 per token is then close to
``target_l0`` at every submodule, embed included; :func:`mean_l0` measures it on the benchmark batch
itself, and the benchmark records it beside its rows.

Calibration goes through two small helpers, :func:`encoder_bias` and :func:`preactivations`, which know
the two encoder conventions in use (``encoder.bias`` of a dictionary_learning ``AutoEncoder``, and
``W_enc``/``b_enc``); a new dictionary class needs only a branch there.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

import featurecircuits as fc

PYTHIA_70M = dict(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                  intermediate_size=2048, max_position_embeddings=2048, rotary_pct=0.25,
                  use_parallel_residual=True)

TARGET_L0 = 64  # features per token the calibrated random dictionaries aim at (trained ones: ~20–150)


def random_batch(vocab: int, n: int, t: int, seed: int = 0) -> fc.Batch:
    g = torch.Generator().manual_seed(seed)
    return fc.Batch(torch.randint(0, vocab, (n, t), generator=g), torch.randint(0, vocab, (n, t), generator=g),
                    torch.randint(0, vocab, (n,), generator=g), torch.randint(0, vocab, (n,), generator=g))


# --------------------------------------------------------------------------------------------------
# reading activations and encoder pre-activations


@contextmanager
def recording(model: fc.Model, submodules, on_output):
    """Call ``on_output(sub, x)`` with each submodule's output (detached) during forwards in the block."""
    handles = []
    for sub in submodules:
        def hook(mod, args, out, sub=sub):
            on_output(sub, (out[0] if isinstance(out, tuple) else out).detach())

        handles.append(model.module(sub).register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def activations(model: fc.Model, ids: torch.Tensor, submodules) -> dict[str, torch.Tensor]:
    """Each submodule's output on ``ids`` (no gradient), flattened to (tokens, d_model)."""
    out: dict[str, torch.Tensor] = {}

    def keep(sub, x):
        out[sub.name] = x.reshape(-1, x.shape[-1])

    with torch.no_grad(), recording(model, submodules, keep):
        model.hf(input_ids=ids.to(model.device))
    return out


def encoder_bias(ae: nn.Module) -> torch.Tensor:
    """The per-feature encoder bias parameter: ``encoder.bias`` (dictionary_learning AutoEncoder) or
    ``b_enc`` (W_enc-style dictionaries)."""
    enc = getattr(ae, "encoder", None)
    if isinstance(enc, nn.Linear) and enc.bias is not None:
        return enc.bias
    if hasattr(ae, "b_enc"):
        return ae.b_enc
    raise TypeError(f"cannot calibrate {type(ae).__name__}: it has neither encoder.bias nor b_enc")


def preactivations(ae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder's pre-activation (before the ReLU), (tokens, width), bias included."""
    enc = getattr(ae, "encoder", None)
    if isinstance(enc, nn.Linear):  # dictionary_learning AutoEncoder: relu(encoder(x - bias))
        return enc(x - ae.bias) if isinstance(getattr(ae, "bias", None), torch.Tensor) else enc(x)
    if hasattr(ae, "W_enc") and hasattr(ae, "b_enc"):
        if getattr(ae, "b_pre", None) is not None:  # featurecircuits SAE: W_enc (x − b_pre) + b_enc
            x = x - ae.b_pre
        elif getattr(ae, "apply_b_dec_to_input", False):  # dictionary_learning JumpReLU option
            x = x - ae.b_dec
        w = ae.W_enc
        # (width, d_in) as nn.Linear holds it, or (d_in, width) as SAELens and JumpReLU hold it
        return x @ (w.T if w.shape[0] == ae.b_enc.numel() and w.shape[1] == x.shape[-1] else w) + ae.b_enc
    raise TypeError(f"cannot calibrate {type(ae).__name__}: unknown encoder layout")


@torch.no_grad()
def calibrate(ae: nn.Module, x: torch.Tensor, target_l0: float) -> None:
    """Shift each feature's encoder bias so that it fires on ``target_l0 / width`` of the rows of ``x``.

    With k = round(target_l0 · rows / width) the new threshold lies halfway between a feature's k-th and
    (k+1)-th largest pre-activation, so exactly k rows exceed it: the mean L0 over ``x`` is k · width /
    rows ≈ target_l0.
    """
    bias = encoder_bias(ae)
    width, rows = bias.numel(), x.shape[0]
    k = max(1, round(target_l0 * rows / width))
    if k >= rows:
        raise ValueError(f"{rows} calibration tokens are too few for L0 {target_l0} at width {width}")
    top = preactivations(ae, x).T.contiguous().topk(k + 1, dim=1).values  # (width, k + 1)
    bias.sub_((top[:, k - 1] + top[:, k]) / 2)


@torch.no_grad()
def mean_l0(model: fc.Model, dicts: dict[str, nn.Module], batch: fc.Batch) -> dict[str, float]:
    """Mean number of active features per token at each submodule, over the clean and patch runs."""
    counts: dict[str, list[float]] = {name: [] for name in dicts}
    subs = model.select(list(dicts))
    for ids in (batch.clean, batch.patch):
        for name, x in activations(model, ids, subs).items():
            counts[name].append(float((dicts[name].encode(x) > 0).sum(-1).float().mean()))
    return {name: sum(v) / len(v) for name, v in counts.items()}


def as_featurecircuits_dictionary(ae: nn.Module) -> nn.Module:
    """The dictionary_learning object converted to featurecircuits' own Dictionary class, where this
    version of featurecircuits has one (same arithmetic); otherwise unchanged."""
    try:
        from featurecircuits.dictionaries.dictionary_learning import convert
    except ImportError:
        return ae
    return convert(ae)


# --------------------------------------------------------------------------------------------------
# settings


def pythia70m_shaped(width: int = 32768, n: int = 10, t: int = 16, seed: int = 0, *,
                     target_l0: float | None = TARGET_L0, calibration_tokens: int = 1024):
    """Pythia-70M's shape with random weights, and random AutoEncoders of ``width`` for all 19 submodules,
    calibrated to ``target_l0`` features per token (``None``: the old uncalibrated bias of -0.02)."""
    import transformers as tr
    from dictionary_learning import AutoEncoder

    torch.manual_seed(seed)
    model = fc.load_model(tr.GPTNeoXForCausalLM(tr.GPTNeoXConfig(**PYTHIA_70M)))
    dicts = {}
    for sub in model.submodules:
        ae = AutoEncoder(model.d_model, width)
        with torch.no_grad():
            ae.encoder.bias.fill_(-0.02)
        ae.activation_dim, ae.dict_size = model.d_model, width
        dicts[sub.name] = ae.eval().requires_grad_(False)
    if target_l0 is not None:
        cal = random_batch(PYTHIA_70M["vocab_size"], math.ceil(calibration_tokens / t), t, seed + 1000)
        acts = activations(model, cal.clean, model.submodules)
        for name, ae in dicts.items():
            calibrate(ae, acts[name], target_l0)
        del acts
    dicts = {name: as_featurecircuits_dictionary(ae) for name, ae in dicts.items()}
    return model, dicts, random_batch(PYTHIA_70M["vocab_size"], n, t, seed)


def organism(n: int = 10):
    model = fc.load_model("organism")
    dicts = fc.load_dictionaries("organism", model)
    task = fc.tasks.Task("ioi", fc.tasks.make_task("ioi", 3 * n, seed=0))
    batch = next(b for b in task.batches(model.tokenizer, n) if len(b) == n)
    return model, dicts, batch
