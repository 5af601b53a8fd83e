"""Estimate the peak memory of an attribution run from shapes alone, before loading any weight.

:func:`plan` counts what the AtP/RelP path holds at its two high points, for ``batch`` prompt pairs of
``tokens`` tokens: the dense path (``attribute(..., sparse=False)``) by default, or, given ``l0`` (features
active per token in either run), the sparse path that ``discover`` and curves run (``sparse=True``), whose
feature tensors hold only the active features (one index set, several value copies) and whose dense
(batch, tokens, width) encoder outputs live only while one submodule is encoded.

- ``parameters``: the model's weights (counted exactly by building the model on the meta device);
- ``dictionaries``: each dictionary's encoder and decoder (2 · d_in · width + width + d_in elements);
- ``features``: dense (batch, tokens, width) feature tensors, in as many copies as the code keeps. The
  gradient path keeps five per submodule at the end: the source run's features, the base run's features
  (the autograd leaves), their gradients or LRP coefficients, the deltas, and the per-feature scores;
  during the backward pass it holds the first two;
- ``errors``: the same copies of the (batch, tokens, d_in) error terms;
- ``activations``: what the model's own forward saves for the backward pass (per layer and token: a
  family-specific number of d_model-, d_ff- and head-sized vectors plus the attention pattern; counted
  with autograd's saved-tensor hooks on tiny models of each family, with and without the LRP rules);
- ``logits``: (batch, positions, vocab) tensors, where positions are those the metric reads (the model
  computes logits only there; 1 for the default logit difference, all tokens for a metric that reads
  every position): the source run's and the base run's logits are kept to the end; during the backward
  pass the softcap's saved output (Gemma-2) and the logit gradients add more;
- ``transient``: short-lived tensors at the peak: the finiteness check's boolean copy of the largest
  score tensor (dense path); on the sparse path, one submodule's dense encode (pre-activations,
  features, the other run's features scattered, two boolean masks) during the base run's forward.

The estimate is the larger of the two phases ("backward" and "scores"); :class:`Plan` keeps the
breakdown of every phase (the peak phase's adds up to ``total``). It counts live tensors and excludes
the runtime itself (Python, torch, libraries: a few hundred MB of resident memory before any model is
loaded). ``python -m benchmarks.plan_check`` compares it with the measured peak RSS minus the process's
resident memory before the model was built: on CPU it comes out 3–5 % low where per-submodule tensors
exceed 32 MiB, and about 15 % low at Pythia-70M's shape with 10 × 16 tokens (21 MiB feature tensors),
where glibc serves such tensors from its heap and freed ones leave holes that still count as resident
(with ``MALLOC_MMAP_THRESHOLD_=131072`` the same run is 2 % low). At small shapes (the organism, Pythia-70M
with 2–16 pairs of 16 tokens) the peak a run *adds* over the loaded model is 1.2–1.5 × the estimate without
its ``parameters`` and ``dictionaries`` terms, plus about 16 MiB on a process's first gradient pass;
:mod:`featurecircuits.budget` (``--memory-budget``) applies that correction when it picks a batch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .registry import PLANNED_METHODS, planner_counts

log = logging.getLogger(__name__)

_COPIES = {"scores": 5, "backward": 2}  # dense feature/error copies held in each phase (see the docstring)


@dataclass(frozen=True)
class Geometry:
    """The shapes the estimate needs, read from a model config."""

    family: str
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    head_dim: int
    vocab: int
    n_params: int
    softcap: bool  # Gemma-2-style final logit softcapping (saves a (B, T, vocab) tensor)


@dataclass(frozen=True)
class Plan:
    """A peak-memory estimate in bytes; ``breakdown`` (of the peak phase) adds up to ``total``."""

    method: str
    batch: int
    tokens: int
    dtype: str
    phase: str  # the phase that peaks
    phases: dict[str, dict[str, int]]  # phase → breakdown (bytes per kind)
    submodules: dict[str, int] = field(default_factory=dict)  # submodule → dictionary width

    @property
    def breakdown(self) -> dict[str, int]:
        """Bytes per kind at the peak phase."""
        return self.phases[self.phase]

    @property
    def phase_totals(self) -> dict[str, int]:
        return {k: sum(v.values()) for k, v in self.phases.items()}

    @property
    def total(self) -> int:
        return sum(self.breakdown.values())

    @property
    def gib(self) -> float:
        return self.total / 2**30

    def to_dict(self) -> dict:
        return {**asdict(self), "breakdown": self.breakdown, "total": self.total}

    def table(self) -> str:
        lines = [f"peak memory estimate: {self.method}, {self.batch} × {self.tokens} tokens, {self.dtype} "
                 f"({len(self.submodules)} dictionaries; peak in the {self.phase} phase)"]
        for key, value in self.breakdown.items():
            lines.append(f"  {key:<14} {value / 2**30:9.3f} GiB")
        lines.append(f"  {'total':<14} {self.gib:9.3f} GiB")
        others = ", ".join(f"{k} {v / 2**30:.3f} GiB" for k, v in self.phase_totals.items() if k != self.phase)
        if others:
            lines.append(f"  (other phase: {others})")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# shapes


def _config(config_or_model):
    """A transformers config from a config, a featurecircuits Model, a Hugging Face model, a config.json
    path, a model directory, ``"organism"`` or a hub id (config only, never weights)."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config_or_model, PretrainedConfig):
        return config_or_model
    if hasattr(config_or_model, "config") and isinstance(config_or_model.config, PretrainedConfig):
        return config_or_model.config
    if isinstance(config_or_model, (str, Path)):
        spec = str(config_or_model)
        if spec == "organism":
            from .models import ORGANISM_DIR

            spec = str(ORGANISM_DIR)
        path = Path(spec)
        if path.is_file() and path.suffix == ".json":
            data = json.loads(path.read_text())
            return AutoConfig.for_model(data.pop("model_type"), **data)
        try:
            return AutoConfig.from_pretrained(spec)
        except OSError as exc:
            raise FileNotFoundError(f"no model config for {spec!r}: not a config.json, a directory holding one, "
                                    f"'organism', or a reachable hub id ({exc.__class__.__name__})") from exc
    raise TypeError(f"plan needs a config, model, path or hub id, got {type(config_or_model).__name__}")


def _count_parameters(config_or_model, config) -> int:
    """Exact parameter count: the model's own, or one built on the meta device (no memory, no weights)."""
    hf = getattr(config_or_model, "hf", config_or_model)
    if isinstance(hf, torch.nn.Module):
        return sum(p.numel() for p in hf.parameters())
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def geometry(config_or_model) -> Geometry:
    """The shapes of a model (family, layers, widths, vocabulary, parameter count) from its config."""
    from .models import family_for

    config = _config(config_or_model)
    config = getattr(config, "text_config", None) or config  # multimodal wrappers keep the LM here
    family = family_for(config).name
    d = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    d_ff = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d)
    head_dim = int(getattr(config, "head_dim", None) or d // heads)
    softcap = getattr(config, "final_logit_softcapping", None) is not None
    return Geometry(family, int(config.num_hidden_layers), d, d_ff, heads, head_dim, int(config.vocab_size),
                    _count_parameters(config_or_model, config), softcap)


def submodule_names(n_layers: int) -> list[str]:
    """Every submodule in execution order: embed, then attn/mlp/resid per layer."""
    return ["embed"] + [f"{k}_{l}" for l in range(n_layers) for k in ("attn", "mlp", "resid")]


def _widths(dict_widths, geo: Geometry) -> dict[str, tuple[int, int]]:
    if dict_widths is None:
        return {}
    if isinstance(dict_widths, int):
        return {name: (dict_widths, geo.d_model) for name in submodule_names(geo.n_layers)}
    if not isinstance(dict_widths, Mapping):
        raise TypeError("dict_widths must be None, an int (one width for every submodule), or a mapping from "
                        "submodule to width or (width, d_in)")
    out = {}
    for name, w in dict_widths.items():
        d_in = geo.n_heads * geo.head_dim if name.startswith("z_") else geo.d_model  # z_l: heads concatenated
        out[name] = (int(w), d_in) if isinstance(w, int) else (int(w[0]), int(w[1]))
        if min(out[name]) < 1:
            raise ValueError(f"dictionary for {name}: width and d_in must be positive, got {w}")
    return out


# --------------------------------------------------------------------------------------------------
# the estimate


def _feature_terms(widths: dict[str, tuple[int, int]], n: int, size: int, l0: float | None, geo: Geometry
                   ) -> tuple[int, int, int, int]:
    """Bytes of one copy of the feature tensors and of the error terms, the transient, and the sparse path's
    index sets (one (3, nnz) int64 set per dictionary, shared by its copies), for ``n`` = batch · tokens."""
    if widths and l0 is not None:  # sparse: nnz = n·l0 per dictionary (bounded by its width)
        nnz = sum(n * min(float(l0), w) for w, _ in widths.values())
        err_one = n * sum(d_in for _, d_in in widths.values()) * size
        # while one submodule is encoded: pre-activations and features, the other run's features scattered
        # densely, and two boolean masks of the active set
        transient = n * max(w for w, _ in widths.values()) * (3 * size + 2)
        return int(nnz * size), err_one, transient, int(nnz * 3 * 8)
    if widths:  # feature level: features (B, T, width) and errors (B, T, d_in) per dictionary
        feat_one = n * sum(w for w, _ in widths.values()) * size
        err_one = n * sum(d_in for _, d_in in widths.values()) * size
        return feat_one, err_one, n * max(w for w, _ in widths.values()), 0  # transient: one byte per element
    return n * (1 + 3 * geo.n_layers) * geo.d_model * size, 0, 0, 0  # component level: one (B, T, d) per submodule


def plan(config_or_model, dict_widths=None, batch: int = 1, tokens: int = 1, *, method: str = "relp",
         dtype: str | torch.dtype = "float32", logit_positions: int = 1, l0: float | None = None) -> Plan:
    """Peak memory of ``attribute(method=...)`` on ``batch`` prompt pairs of ``tokens`` tokens.

    ``dict_widths``: ``None`` (component level: every submodule, no dictionaries), an int (that width at
    every submodule), or a mapping from submodule name to width or to (width, d_in) (d_in defaults to
    d_model; Gemma Scope's attention SAEs read hook_z, of width heads · head_dim). ``logit_positions``:
    how many final positions' logits the metric reads (its ``last_positions``; 0: every position).
    ``l0``: features active per token in the clean or the patch run (at most twice a dictionary's L0): plan
    the sparse path (``attribute(..., sparse=True)``, what ``discover`` runs) instead of the dense one.
    """
    if method not in PLANNED_METHODS:
        raise ValueError(f"the planner covers methods {', '.join(PLANNED_METHODS)}, not {method!r}")
    from .models import parse_dtype

    torch_dtype = parse_dtype(dtype)
    dtype = str(torch_dtype).removeprefix("torch.")
    if not (isinstance(batch, int) and isinstance(tokens, int) and batch >= 1 and tokens >= 1):
        raise ValueError(f"batch and tokens must be positive integers, got {batch!r} and {tokens!r}")
    if l0 is not None and not (isinstance(l0, (int, float)) and l0 >= 0):
        raise ValueError(f"l0 must be a non-negative number of features per token, got {l0!r}")
    if l0 is not None and not dict_widths:
        raise ValueError("l0 plans the sparse feature path; give dictionary widths too (component level has no "
                         "features)")
    if not (isinstance(logit_positions, int) and logit_positions >= 0):
        raise ValueError(f"logit_positions must be a non-negative integer (0: every position), got {logit_positions!r}")
    size = torch_dtype.itemsize
    geo = geometry(config_or_model)
    widths = _widths(dict_widths, geo)
    n = batch * tokens

    params = geo.n_params * size
    dict_weights = sum(2 * d_in * w + w + d_in for w, d_in in widths.values()) * size
    feat_one, err_one, transient, index_bytes = _feature_terms(widths, n, size, l0, geo)
    cd, cff, catt, cqkv = planner_counts(geo.family, method)
    per_token_layer = cd * geo.d_model + cff * geo.d_ff + catt * geo.n_heads * tokens + \
        cqkv * geo.n_heads * geo.head_dim
    activations = int(n * (geo.n_layers * per_token_layer + 3 * geo.d_model) * size)
    logit = batch * (min(logit_positions, tokens) if logit_positions else tokens) * geo.vocab * size

    phases = {
        "backward": {"parameters": params, "dictionaries": dict_weights,
                     "features": _COPIES["backward"] * feat_one + index_bytes,
                     "errors": _COPIES["backward"] * err_one,
                     "activations": activations,
                     # source and base logits, the softcap's saved tanh, the gradient of the logits
                     "logits": (3 + geo.softcap + geo.softcap) * logit,
                     # the sparse path encodes (densely, one submodule at a time) during the base forward
                     "transient": transient if l0 is not None and widths else 0},
        "scores": {"parameters": params, "dictionaries": dict_weights,
                   "features": _COPIES["scores"] * feat_one + index_bytes,
                   "errors": _COPIES["scores"] * err_one,
                   "activations": 0, "logits": 2 * logit, "transient": 0 if l0 is not None else transient},
    }
    peak = max(phases, key=lambda k: sum(phases[k].values()))
    return Plan(method, batch, tokens, dtype, peak, phases, {k: w for k, (w, _) in widths.items()})
