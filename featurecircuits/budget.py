"""A memory budget turned into a batch size: the largest batch whose planned peak fits.

The budget counts the memory a run *adds* over the loaded model and dictionaries, as measured on its device:
on CPU the process's peak resident memory (VmHWM) minus its resident memory once the model and dictionaries
are loaded; on CUDA ``torch.cuda.max_memory_allocated`` minus ``torch.cuda.memory_allocated`` before the run.
:func:`measure_peak` measures exactly that.

The peak is :func:`featurecircuits.plan.plan`'s estimate without its ``parameters`` and ``dictionaries``
terms (loaded already), corrected by :data:`OVERHEAD`. The plan counts live tensors only; measured at the
organism's shape and at Pythia-70M's (2–16 pairs, 14–16 tokens, dense and sparse paths) the added peak RSS
is 1.29–1.46 × the planned one (allocator rounding and heap holes, autograd bookkeeping), and the first
gradient pass of a process adds about 16 MiB once (thread pools, kernels' scratch). Hence 1.5 × plan +
20 MiB on CPU. On CUDA the caching allocator's peak has no runtime term; the factor is kept (not yet
measured there).

What each path plans: without dictionaries, the component-level dense path (``compare``); with them, the
sparse path that ``discover``, curves and ``compare --level feature`` run, with the features active per token
measured on a few of the task's pairs (:func:`probe_l0`). AP and IG are planned as the gradient path, their
sequences per forward (``max_batch``) capped by the caller (``compare``: two batches' sequences; not measured
for IG). ``edges=True`` adds discover's edge scoring (:func:`added_peak`); feature dossiers have their own
estimate (:func:`dossier_peak`).
"""

from __future__ import annotations

import ctypes
import gc
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import UsageError
from .registry import PLANNED_METHODS

if TYPE_CHECKING:
    from .plan import Plan

__all__ = ["OVERHEAD", "BatchChoice", "added_peak", "choose_batch", "choose_dossier_tokens", "dossier_peak",
           "format_size", "measure_peak", "parse_size", "probe_l0", "task_tokens"]

MiB = 2**20
# device type → (factor on the planned added bytes, constant bytes); see the module docstring
OVERHEAD = {"cpu": (1.5, 20 * MiB), "cuda": (1.5, 0)}
_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": MiB, "mib": MiB, "mb": 10**6,
          "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")
EDGE_CHUNK = 32  # downstream nodes per batched VJP: edges.score_edges' default, which discover keeps
PROBE_PAIRS = 8  # pairs whose active features stand for the task's


def parse_size(text: str) -> int:
    """Bytes from a size: a number with an optional unit, ``4GiB``, ``512MiB``, ``2G`` (K, M, G, T and KiB …
    TiB are powers of 1024; KB, MB, GB, TB powers of 1000; no unit: bytes). Raises ValueError."""
    match = _SIZE.fullmatch(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"expected a size such as 4GiB, 512MiB or 2G (units K, M, G, T, KiB … TiB, KB … TB), "
                         f"got {text!r}")
    value = float(match.group(1)) * _UNITS[unit]
    if value < 1:
        raise ValueError(f"a size must be at least 1 byte, got {text!r}")
    return int(value)


def format_size(n: int) -> str:
    """A size rounded up to whole KiB below 1 MiB, whole MiB below 1 GiB, else GiB with two decimals: parseable
    again, to at least the size."""
    if n >= 2**30:
        return f"{math.ceil(n / 2**30 * 100) / 100:.2f}GiB"
    if n < MiB:
        return f"{math.ceil(n / 2**10)}KiB"
    return f"{math.ceil(n / MiB)}MiB"


def _device_type(model) -> str:
    import torch

    return "cuda" if torch.device(model.device).type == "cuda" else "cpu"


def _widths(dicts) -> dict | None:
    if not dicts:
        return None
    return {name: (int(ae.width), int(ae.d_in)) for name, ae in dicts.items()}


def added_peak(model, dicts, batch: int, tokens: int, *, method: str = "relp", l0: float | None = None,
               logit_positions: int = 1, edges: bool = False) -> tuple[int, Plan]:
    """(bytes a run on ``batch`` pairs of ``tokens`` tokens adds over the loaded model and dictionaries, as
    :func:`measure_peak` measures it; the plan it comes from). ``edges``: also discover's edge scoring, whose
    batched VJPs hold :data:`EDGE_CHUNK` gradients at every spliced submodule, twice (vmap's intermediates),
    beside the batch's attribution (one discover run on the organism, 4 pairs: 45 MiB measured, 86 planned)."""
    from .plan import plan

    method = method if method in PLANNED_METHODS else "relp"  # AP and IG: see the module docstring
    dtype = next(model.hf.parameters()).dtype
    p = plan(model, _widths(dicts), batch, tokens, method=method, dtype=dtype, l0=l0 if dicts else None,
             logit_positions=logit_positions)
    loaded = p.breakdown["parameters"] + p.breakdown["dictionaries"]
    extra = 0
    if edges:
        d_in = sum(ae.d_in for ae in dicts.values()) if dicts else (1 + 3 * model.n_layers) * model.d_model
        extra = 2 * EDGE_CHUNK * batch * tokens * d_in * dtype.itemsize
    factor, constant = OVERHEAD[_device_type(model)]
    return int(factor * (p.total - loaded + extra)) + constant, p


@dataclass(frozen=True)
class BatchChoice:
    """The batch a budget allows: ``peak`` is its planned added peak (bytes), ``limit`` what capped it below the
    budget's largest (``pairs``: the task has no more; ``batch_size``: --batch-size), else None."""

    batch: int
    peak: int
    budget: int
    tokens: int
    device: str
    limit: str | None
    plan: Plan
    unit: str = "pairs"  # what ``batch`` counts: prompt pairs, or tokens per forward (dossiers)

    def message(self, option: str = "memory budget") -> str:
        capped = {None: "", "pairs": " (all the pairs there are)", "batch_size": " (capped by --batch-size)",
                  "default": " (the default)"}[self.limit]
        rows = "pairs" if self.unit == "pairs" else "rows"
        return (f"{option} {format_size(self.budget)}: batch of {self.batch} {self.unit}{capped}, planned peak "
                f"{format_size(self.peak)} over the loaded model ({rows} of {self.tokens} tokens, {self.device})")


def choose_batch(model, dicts, budget: int, *, tokens: int, n_pairs: int, method: str = "relp",
                 l0: float | None = None, logit_positions: int = 1, cap: int | None = None, edges: bool = False,
                 option: str = "memory budget") -> BatchChoice:
    """The largest batch (at most ``n_pairs``, and ``cap`` where given) whose :func:`added_peak` fits in
    ``budget`` bytes. Raises :class:`UsageError` naming the smallest budget that fits one pair."""
    if not (isinstance(budget, int) and budget >= 1):
        raise ValueError(f"{option} must be a positive number of bytes, got {budget!r}")
    top = max(1, min(n_pairs, cap or n_pairs))

    def peak(b: int):
        return added_peak(model, dicts, b, tokens, method=method, l0=l0, logit_positions=logit_positions,
                          edges=edges)

    low, p = peak(1)
    if low > budget:
        raise _too_small(option, budget, f"one pair of {tokens} tokens", low, model)
    lo = _largest(lambda b: peak(b)[0] <= budget, top)  # the plan grows with the batch
    fits, p = peak(lo)
    limit = None if lo < top else ("batch_size" if cap is not None and cap < n_pairs else "pairs")
    return BatchChoice(lo, fits, budget, tokens, _device_type(model), limit, p)


def _largest(fits, top: int) -> int:
    """The largest k in [1, top] with ``fits(k)``, for ``fits`` true at 1 and monotone (bisection)."""
    lo, hi = 1, top
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _too_small(option: str, budget: int, what: str, need: int, model) -> UsageError:
    return UsageError(f"{option} {format_size(budget)} is too small: {what} needs about {format_size(need)} over the "
                      f"loaded model ({_device_type(model)}); give at least {format_size(need)}")


def dossier_peak(model, dicts, tokens: int, config=None) -> tuple[int, Plan]:
    """(bytes ``featurecircuits features`` adds over the loaded model with ``tokens`` tokens per forward, the
    plan of its forward). Per token: every submodule's captured activation, one dictionary's dense encode
    (pre-activations, features, masks; in chunks of at most ``CHUNK_ELEMENTS``) and one layer of the no-gradient
    forward (the plan's saved activations over its layers); fixed: the dossiers' states, one dictionary's
    copy while its state is updated. Both doubled (measured on the organism: 1.1–1.4 × below this)."""
    from .features.dossier import DossierConfig
    from .features.state import CHUNK_ELEMENTS, FeatureState
    from .plan import plan

    cfg = config or DossierConfig()
    size = next(model.hf.parameters()).dtype.itemsize
    rows = max(1, tokens // cfg.seq_len)
    p = plan(model, None, rows, cfg.seq_len, dtype=next(model.hf.parameters()).dtype)
    forward = p.phases["backward"]["activations"] // model.n_layers + p.phases["backward"]["logits"]
    width = max(ae.width for ae in dicts.values())
    elements = CHUNK_ELEMENTS["cpu" if _device_type(model) == "cpu" else "other"]
    chunk = min(rows * cfg.seq_len, max(cfg.seq_len, elements // width))  # tokens encoded densely at once
    per_row = sum(ae.d_in for ae in dicts.values()) * size * cfg.seq_len
    states = [sum(t.nbytes for t in FeatureState.empty(
        ae.width, k=cfg.k, window=cfg.window, n_bins=cfg.n_bins, n_bands=cfg.n_bands,
        n_quantile_samples=cfg.n_quantile_samples, n_random=cfg.n_random, device="meta").tensors().values())
        for ae in dicts.values()]
    moving = rows * per_row + chunk * width * (3 * size + 2) + forward
    return 2 * moving + sum(states) + max(states) + OVERHEAD[_device_type(model)][1], p


def choose_dossier_tokens(model, dicts, budget: int, *, config=None, option: str = "memory budget") -> BatchChoice:
    """The most tokens per forward (whole rows, at most the config's ``batch_tokens``, which keeps its cache
    key under a generous budget) whose :func:`dossier_peak` fits in ``budget`` bytes."""
    from .features.dossier import DossierConfig

    cfg = config or DossierConfig()
    top = max(1, cfg.batch_tokens // cfg.seq_len)
    low, p = dossier_peak(model, dicts, cfg.seq_len, cfg)
    if low > budget:
        raise _too_small(option, budget, f"one row of {cfg.seq_len} tokens", low, model)
    rows = _largest(lambda r: dossier_peak(model, dicts, r * cfg.seq_len, cfg)[0] <= budget, top)
    peak, p = dossier_peak(model, dicts, rows * cfg.seq_len, cfg)
    return BatchChoice(rows * cfg.seq_len, peak, budget, cfg.seq_len, _device_type(model),
                       "default" if rows == top else None, p, unit="tokens per forward")


def task_tokens(task, tokenizer, n: int) -> int:
    """The longest prompt (tokens) among the task's first ``n`` pairs."""
    return max(len(tokenizer.encode(e["clean_prefix"])) for e in task.examples[:n])


def probe_l0(model, dicts, batch) -> float:
    """Features active per token in the clean or the patch run (their union), averaged over the dictionaries
    and over the tokens of ``batch`` — what the planner's sparse path takes as ``l0``."""
    import torch

    from .splice import Splice, run

    splice = Splice(model, dicts)
    masks: dict[str, torch.Tensor] = {}

    def edit(sub, x):
        active = splice.dictionaries[sub.name].encode(x.detach()) > 0
        masks[sub.name] = active | masks[sub.name] if sub.name in masks else active
        return None

    with torch.no_grad():
        for ids in (batch.clean, batch.patch):
            run(model, ids.to(model.device), edit, splice.submodules, logits_to_keep=1)
    return sum(float(m.sum()) for m in masks.values()) / (len(masks) * batch.clean.numel())


def _cpu_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {key}")


def measure_peak(fn, device="cpu"):
    """(``fn()``'s result, the bytes its run added at its peak): on CPU VmHWM after resetting it (Linux
    ``clear_refs``; freed heap is first returned to the system so that it counts when touched again), on
    CUDA ``max_memory_allocated`` over ``memory_allocated`` before."""
    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - before
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _cpu_status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident size to the current one
    out = fn()
    return out, _cpu_status("VmHWM") - before
