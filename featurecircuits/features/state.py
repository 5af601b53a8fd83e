"""The streaming state behind feature dossiers: fixed-size tensors per dictionary, updated once per batch
from that batch's nonzero feature activations, vectorised over features (no Python loop over features or
tokens). Its size depends on the dictionary width and the settings, never on how many tokens went by.

Per feature it keeps

- ``count``, ``act_sum``, ``act_max``, ``act_min``: how often it fired (f > 0) and how strongly;
- a histogram of ``n_bins`` equal bins over ``[0, n_bins · 2**exp)``, ``exp`` the feature's own scale. The
  first firing sets ``exp`` so that the batch maximum lies in the top half; whenever a larger activation comes,
  ``exp`` grows by d and every bin i folds into bin ``i >> d`` (bins of width 2**exp nest exactly into bins of
  width 2**(exp+d)), so the histogram stays exact for its bins and its range ends between max and 2·max;
- a :class:`Reservoir` of the ``k`` strongest firings with distinct token windows (``top``);
- ``n_bands`` reservoirs of ``n_quantile_samples`` firings drawn uniformly within activation bands (``bands``:
  band b covers ``[b, b+1) · range / n_bands``, the same nested scale as the histogram) and one of
  ``n_random`` firings drawn uniformly over all (``random``). Sampling keeps, per group, the entries with the
  largest random keys (a bottom-k sketch): merging two such samples is taking the best keys of their union,
  so when the scale grows, bands fold like bins and stay exact uniform samples. The keys are a hash of the
  firing's place (row, position, feature) and a per-dictionary salt (:func:`sampling_keys`), so samples
  do not depend on the device or on how the corpus is batched.

A batch's activations arrive chunk by chunk (whole rows, :func:`chunks`) as :class:`Events`: the chunk's
positive entries and its dense features, dropped once the chunk is folded in, so no dense (tokens, width)
tensor larger than a chunk (16 MiB, or one row) exists at a time. Reservoirs (:mod:`.reservoir`) keep their
entries in unordered slots; each entry carries its token window (``left`` tokens before the firing token,
``right`` after; -1 outside the row), the feature's activation at every window position, the peak value and
where it was (``row << 20 | position``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .reservoir import Reservoir, merge, regroup

__all__ = ["CHUNK_ELEMENTS", "POSITION_BITS", "Events", "FeatureState", "Windows", "chunks", "encode_events",
           "sampling_keys"]

UNSET = -(2**30)  # scale exponent of a feature that has not fired yet
POSITION_BITS = 20  # where = row << 20 | position (sequences are far shorter than 2**20)
# features encoded at a time: 64 MiB of float32 on a CPU, 1 GiB on an accelerator (fewer, larger steps)
CHUNK_ELEMENTS = {"cpu": 2**24, "other": 2**28}
_HASH_SEED = 0x5EED
_MIX = (-7046029254386353131, -4658895280553007687, -7723592293110705685)  # splitmix64's odd constants


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 (products wrap; shifts masked to act as unsigned)."""
    x = x * _MIX[0]
    x = (x ^ ((x >> 31) & (2**33 - 1))) * _MIX[1]
    x = (x ^ ((x >> 29) & (2**35 - 1))) * _MIX[2]
    return x ^ ((x >> 32) & (2**32 - 1))


def sampling_keys(where: torch.Tensor, feats: torch.Tensor, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent uniform keys in [0, 1) per firing, a hash of (where, feature, salt): the same on
    every device and however the batch is cut into chunks or batches."""
    h = _mix((where << 20) ^ feats ^ salt)
    scale = 1.0 / 2**24
    return (((h >> 40) & (2**24 - 1)).float() * scale, ((h >> 8) & (2**24 - 1)).float() * scale)


@dataclass
class Events:
    """A chunk's firings: ``flat`` = row · width + feature (ascending) and their activations, with the dense
    features ``f`` (rows, width) of the chunk, kept while the chunk is folded in (window activations)."""

    flat: torch.Tensor  # (n,) int64
    vals: torch.Tensor  # (n,) float32
    f: torch.Tensor  # (rows, width)

    def __post_init__(self):
        width = self.f.shape[1]
        self.rows = torch.div(self.flat, width, rounding_mode="floor")
        self.feats = self.flat - self.rows * width

    def lookup(self, rows: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Activations at (rows[i, j], feats[i]) (0 where ``rows`` is -1 or the value is not positive)."""
        vals = self.f[rows.clamp(min=0), feats[:, None]].float()
        return torch.where((rows >= 0) & (vals > 0), vals, torch.zeros((), device=vals.device))


@torch.no_grad()
def encode_events(dictionary, x: torch.Tensor) -> Events:
    """Encode the token rows ``x`` (n, d) and find the positive activations."""
    f = dictionary.encode(x)
    idx = torch.nonzero(f.view(-1)).squeeze(1)
    v = f.view(-1)[idx]
    positive = v > 0  # identity dictionaries have negative values: not firings
    if not bool(positive.all()):
        idx, v = idx[positive], v[positive]
    return Events(idx, v.float(), f)


def chunks(lengths: torch.Tensor, width: int, budget: int) -> list[tuple[int, int]]:
    """Batch rows [b0, b1) grouped so that each group's tokens × ``width`` stays within ``budget`` (a row at
    least): dense features exist for one group at a time, and windows never leave their row."""
    out, start, size = [], 0, 0
    for b, n in enumerate(lengths.tolist()):
        if b > start and (size + n) * width > budget:
            out.append((start, b))
            start, size = b, 0
        size += n
    out.append((start, len(lengths)))
    return out


class Windows:
    """One batch's token windows: for each valid (non-padding) token row, its ids and position, and the
    firing feature's activations at its neighbours."""

    def __init__(self, ids: torch.Tensor, lengths: torch.Tensor, first_row: int, left: int, right: int):
        B, T = ids.shape
        device = ids.device
        self.left, self.width = left, left + right + 1
        valid = torch.arange(T, device=device)[None, :] < lengths[:, None]
        self.b, self.t = valid.nonzero(as_tuple=True)  # valid rows in row-major order
        padded = torch.full((B, T + left + right), -1, dtype=torch.int32, device=device)
        padded[:, left:left + T] = torch.where(valid, ids, -1).to(torch.int32)
        rows = torch.full((B, T + left + right), -1, dtype=torch.long, device=device)
        rows[self.b, self.t + left] = torch.arange(self.b.numel(), device=device)
        self._cols = self.t[:, None] + torch.arange(self.width, device=device)[None, :]
        self._padded, self._rows = padded, rows
        g = torch.Generator().manual_seed(_HASH_SEED)
        self._mult = (torch.randint(1, 2**62, (self.width,), generator=g) | 1).to(device)
        self.where = (self.b + first_row) << POSITION_BITS | self.t

    @property
    def n(self) -> int:
        return self.b.numel()

    def tokens(self, rows: torch.Tensor) -> torch.Tensor:
        return self._padded[self.b[rows, None], self._cols[rows]]

    def hashes(self, tokens: torch.Tensor) -> torch.Tensor:
        """A 64-bit hash of each token window (int64 arithmetic wraps, which is fine for a hash)."""
        return ((tokens.long() + 2) * self._mult).sum(1)

    def acts(self, events: Events, rows: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """(n, L) activations of feature ``feats[i]`` across row ``rows[i]``'s window (0 outside)."""
        return events.lookup(self._rows[self.b[rows, None], self._cols[rows]], feats)


@dataclass
class FeatureState:
    """One dictionary's running statistics (see the module docstring)."""

    count: torch.Tensor  # (W,) int64 firings
    act_sum: torch.Tensor  # (W,) float64
    act_max: torch.Tensor  # (W,) float32 (0 before the first firing)
    act_min: torch.Tensor  # (W,) float32 (inf before the first firing)
    exp: torch.Tensor  # (W,) int64 histogram scale: bins of width 2**exp
    hist: torch.Tensor  # (W, n_bins) int64
    top: Reservoir  # W groups of k
    bands: Reservoir  # W * n_bands groups of n_quantile_samples
    random: Reservoir  # W groups of n_random

    @classmethod
    def empty(cls, width: int, *, k: int, window: int, n_bins: int, n_bands: int, n_quantile_samples: int,
              n_random: int, device=None) -> FeatureState:
        z = dict(device=device)
        return cls(torch.zeros(width, dtype=torch.long, **z), torch.zeros(width, dtype=torch.float64, **z),
                   torch.zeros(width, **z), torch.full((width,), float("inf"), **z),
                   torch.full((width,), UNSET, dtype=torch.long, **z),
                   torch.zeros(width, n_bins, dtype=torch.long, **z),
                   Reservoir.empty(width, k, window, device, hashed=True),
                   Reservoir.empty(width * n_bands, n_quantile_samples, window, device),
                   Reservoir.empty(width, n_random, window, device))

    SCALARS = ("count", "act_sum", "act_max", "act_min", "exp", "hist")

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {name: getattr(self, name) for name in self.SCALARS}
        for name in ("top", "bands", "random"):
            out.update(getattr(self, name).tensors(name))
        return out

    @classmethod
    def from_tensors(cls, tensors: dict) -> FeatureState:
        return cls(**{name: tensors[name] for name in cls.SCALARS},
                   **{name: Reservoir.from_tensors(tensors, name) for name in ("top", "bands", "random")})

    @property
    def width(self) -> int:
        return self.count.numel()

    @property
    def n_bins(self) -> int:
        return self.hist.shape[1]

    @property
    def n_bands(self) -> int:
        return self.bands.score.shape[0] // self.width

    def update(self, events: Events, windows: Windows, salt: int) -> None:
        """Fold in one chunk's firings (rows index the chunk's valid token rows); ``salt`` seeds the
        sampling keys (one per dictionary)."""
        if not events.vals.numel():
            return
        feats, vals = events.feats, events.vals
        self.count += torch.bincount(feats, minlength=self.width)
        self.act_sum.index_add_(0, feats, vals.double())
        self.act_max.scatter_reduce_(0, feats, vals, "amax")
        self.act_min.scatter_reduce_(0, feats, vals, "amin")
        self._rescale()
        per_bin = torch.exp2(-self.exp.double())  # 1 / bin width: a power of two, so the product is exact
        bins = (vals * per_bin[feats]).long().clamp_(0, self.n_bins - 1)  # truncation = floor for vals > 0
        self.hist.view(-1).index_add_(0, feats * self.n_bins + bins, torch.ones_like(bins))
        self._offer(self.top, events, windows, feats, vals, hashed=True)
        band_keys, random_keys = sampling_keys(windows.where[events.rows], feats, salt)
        if self.bands.m:
            groups = feats * self.n_bands + bins * self.n_bands // self.n_bins
            self._offer(self.bands, events, windows, groups, band_keys)
        if self.random.m:
            self._offer(self.random, events, windows, feats, random_keys)

    def _rescale(self) -> None:
        """Grow the scale of features whose maximum left their histogram's range, folding bins and bands."""
        grow = (self.act_max > 0) & (self.act_max >= self.n_bins * torch.exp2(self.exp.double()))
        if not bool(grow.any()):
            return
        need = torch.frexp(self.act_max / self.n_bins).exponent.long()  # act_max < n_bins · 2**need
        fresh = grow & (self.exp == UNSET)
        self.exp[fresh] = need[fresh]
        feats = (grow & ~fresh).nonzero().squeeze(1)
        if feats.numel():
            shift = (need[feats] - self.exp[feats]).clamp(max=62)
            self.exp[feats] = need[feats]
            target = torch.arange(self.n_bins, device=feats.device)[None, :] >> shift[:, None]
            self.hist[feats] = torch.zeros_like(self.hist[feats]).scatter_add_(1, target, self.hist[feats])
            bands = torch.arange(self.n_bands, device=feats.device)
            touched = (feats[:, None] * self.n_bands + bands).reshape(-1)
            new_group = (feats[:, None] * self.n_bands + (bands[None, :] >> shift[:, None])).reshape(-1)
            if self.bands.m:
                regroup(self.bands, touched, new_group)

    @staticmethod
    def _offer(res: Reservoir, events: Events, windows: Windows, groups, scores, hashed: bool = False) -> None:
        """Offer the firings whose score clears their group's bar (activation for the top-k, a random key
        for samples) to the reservoir."""
        cand = (scores > res.bar()[groups]).nonzero().squeeze(1)
        rows, feats = events.rows[cand], events.feats[cand]
        tokens = windows.tokens(rows) if hashed else None
        keys = windows.hashes(tokens) if hashed else None

        def payload(i):
            out = {"value": events.vals[cand[i]], "where": windows.where[rows[i]],
                   "tokens": tokens[i] if tokens is not None else windows.tokens(rows[i]),
                   "acts": windows.acts(events, rows[i], feats[i])}
            if keys is not None:
                out["key"] = keys[i]
            return out

        merge(res, groups[cand], scores[cand], payload, keys)
