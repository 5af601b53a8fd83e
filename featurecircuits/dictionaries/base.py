"""The one dictionary interface every format is converted to at load time.

A :class:`Dictionary` maps a submodule's output ``x`` (…, d_in) to features ``f = encode(x)`` (…, width) and
back, ``decode(f)``, affinely. Besides ``encode``/``decode`` it declares what the rest of the toolkit needs:
``decoder_rows`` (width, d_in: each feature's contribution per unit of activation), ``encoder_rows``
(width, d_in, with ``∂f_j/∂x = 1[f_j > 0]·encoder_rows[j]`` for the ReLU family, used for edges in closed
form; ``None`` where the Jacobian has another form), its ``activation`` kind, and a ``source`` record
(format, path or hub id, and a hash of the weights as held here, so the same dictionary stored in two
formats has one hash).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..sparse import row_sums

ACTIVATIONS = ("relu", "jumprelu", "topk", "gated", "identity")


@dataclass(frozen=True)
class DictionarySource:
    format: str  # "dictionary_learning", "saelens", "gemma_scope", "neurons", "memory"
    path: str  # file, folder or hub id it was read from ("" for one built in memory)
    hash: str  # sha256 of the weights as held by the Dictionary (format-independent)
    spec: str = ""  # the canonical spec part that loaded it within a set ("" when loaded alone or built)

    def to_dict(self) -> dict:
        return asdict(self)


class Dictionary(nn.Module):
    """Base class: subclasses set ``activation`` and implement encode/decode and the row accessors."""

    activation: str = ""

    def __init__(self):
        super().__init__()
        self.source = DictionarySource("memory", "", "")

    @property
    def d_in(self) -> int:
        return int(self.decoder_rows.shape[1])

    @property
    def width(self) -> int:
        return int(self.decoder_rows.shape[0])

    @property
    def decoder_rows(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def encoder_rows(self) -> torch.Tensor | None:
        return None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @property
    def decoder_bias(self) -> torch.Tensor | None:
        return None

    @property
    def sparse(self) -> bool:
        """Whether features are mostly zero, so that storing them sparsely pays."""
        return True

    def decode_sparse(self, indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """``decode`` of the (…, width) feature tensor holding ``values`` at ``indices`` (ndim, nnz) and zero
        elsewhere, as a sum over the active features only (differentiable in ``values``)."""
        lead = shape[:-1]
        rows = torch.zeros_like(indices[0])
        for dim in range(len(lead)):
            rows = rows * lead[dim] + indices[dim]
        dec = self.decoder_rows  # (width, d_in), each feature's vector contiguous
        out = row_sums(rows, indices[-1], values, dec, math.prod(lead)).view(*lead, dec.shape[1])
        bias = self.decoder_bias
        return out if bias is None else out + bias

    def canonical_tensors(self) -> dict[str, torch.Tensor]:
        """Named tensors that define the dictionary, in one layout whatever the file format."""
        raise NotImplementedError

    def weights_hash(self) -> str:
        h = hashlib.sha256(self.activation.encode())
        for name, t in sorted(self.canonical_tensors().items()):
            t = t.detach().to("cpu", torch.float32).contiguous()
            h.update(f"{name}:{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    def with_source(self, format: str, path: str) -> Dictionary:
        """Record where the dictionary came from (and the hash of its weights); returns self."""
        self.source = DictionarySource(format, str(path), self.weights_hash())
        return self

    def extra_repr(self) -> str:
        return f"{self.activation}, d_in={self.d_in}, width={self.width}, source={self.source.format}"


class LinearDecoder(Dictionary):
    """A dictionary whose decoder is ``W_dec f + b_dec``, with each feature's vector stored contiguously in
    ``W_dec_rows`` (width, d_in) (the sparse path gathers the active ones) and ``b_dec`` possibly None."""

    @property
    def W_dec(self) -> torch.Tensor:
        """The decoder in nn.Linear layout (d_in, width), a view of ``W_dec_rows``."""
        return self.W_dec_rows.t()

    @property
    def decoder_rows(self) -> torch.Tensor:
        return self.W_dec_rows.detach()

    @property
    def decoder_bias(self) -> torch.Tensor | None:
        return self.b_dec

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        out = F.linear(f, self.W_dec)
        return out if self.b_dec is None else out + self.b_dec


class SAE(LinearDecoder):
    """``encode(x) = σ(W_enc (x − b_pre) + b_enc)``, ``decode(f) = W_dec f + b_dec``, with σ one of
    ``relu``, ``jumprelu`` (``threshold`` per feature, or a scalar) or ``topk`` (``k`` largest after ReLU).

    Weights are held in ``nn.Linear`` layout (encoder (width, d_in), decoder (d_in, width)) so that a
    dictionary_learning ``AutoEncoder`` converts without changing a bit of its arithmetic.
    """

    def __init__(self, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None,
                 *, b_pre: torch.Tensor | None = None, activation: str = "relu",
                 threshold: torch.Tensor | None = None, k: int | None = None):
        super().__init__()
        if activation not in ("relu", "jumprelu", "topk"):
            raise ValueError(f"SAE activation {activation!r} is not one of relu, jumprelu, topk")
        if (activation == "jumprelu") != (threshold is not None):
            raise ValueError("a jumprelu SAE needs a threshold, and only a jumprelu SAE has one")
        if (activation == "topk") != (k is not None):
            raise ValueError("a topk SAE needs k, and only a topk SAE has one")
        width, d_in = W_enc.shape
        shapes = {"b_enc": (b_enc, (width,)), "W_dec": (W_dec, (d_in, width)), "b_dec": (b_dec, (d_in,)),
                  "b_pre": (b_pre, (d_in,))}
        if threshold is not None:
            shapes["threshold"] = (threshold, (width,) if threshold.ndim else ())
        for name, (t, shape) in shapes.items():
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape} for an SAE with "
                                 f"d_in {d_in} and width {width}")
        self.activation = activation
        self.W_enc = nn.Parameter(W_enc.detach().clone(), requires_grad=False)
        self.b_enc = nn.Parameter(b_enc.detach().clone(), requires_grad=False)
        # each feature's decoder vector contiguous: the sparse path gathers the active ones
        self.W_dec_rows = nn.Parameter(W_dec.detach().t().contiguous(), requires_grad=False)
        self.b_dec = None if b_dec is None else nn.Parameter(b_dec.detach().clone(), requires_grad=False)
        self.b_pre = None if b_pre is None else nn.Parameter(b_pre.detach().clone(), requires_grad=False)
        self.threshold = None if threshold is None else nn.Parameter(threshold.detach().clone(), requires_grad=False)
        self.k = None if k is None else int(k)

    @property
    def encoder_rows(self) -> torch.Tensor:
        return self.W_enc.detach()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.b_pre is not None:
            x = x - self.b_pre
        pre = F.linear(x, self.W_enc, self.b_enc)
        if self.activation == "jumprelu":
            return F.relu(pre * (pre > self.threshold))
        f = F.relu(pre)
        if self.activation == "topk":
            top = f.topk(min(self.k, f.shape[-1]), dim=-1, sorted=False)
            f = torch.zeros_like(f).scatter_(-1, top.indices, top.values)
        return f


    def canonical_tensors(self) -> dict[str, torch.Tensor]:
        zeros = torch.zeros(self.d_in)
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec,
               "b_dec": zeros if self.b_dec is None else self.b_dec,
               "b_pre": zeros if self.b_pre is None else self.b_pre}
        if self.threshold is not None:
            out["threshold"] = self.threshold.expand(self.width)
        if self.k is not None:
            out["k"] = torch.tensor([float(self.k)])
        return out


class GatedSAE(LinearDecoder):
    """Gated SAE (Rajamanoharan et al.): with ``z = W_enc (x − b_pre)``,
    ``f = 1[z + b_gate > 0] · relu(exp(r_mag) ⊙ z + b_mag)``; ``decode(f) = W_dec f + b_dec``."""

    activation = "gated"

    def __init__(self, W_enc, b_gate, b_mag, r_mag, W_dec, b_dec, *, b_pre=None):
        super().__init__()
        width, d_in = W_enc.shape
        for name, t, shape in (("b_gate", b_gate, (width,)), ("b_mag", b_mag, (width,)), ("r_mag", r_mag, (width,)),
                               ("W_dec", W_dec, (d_in, width)), ("b_dec", b_dec, (d_in,)), ("b_pre", b_pre, (d_in,))):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
        for name, t in (("W_enc", W_enc), ("b_gate", b_gate), ("b_mag", b_mag), ("r_mag", r_mag),
                        ("W_dec_rows", W_dec.t().contiguous()), ("b_dec", b_dec), ("b_pre", b_pre)):
            setattr(self, name, None if t is None else nn.Parameter(t.detach().clone(), requires_grad=False))

    @property
    def encoder_rows(self) -> torch.Tensor:
        return (self.W_enc * self.r_mag.exp()[:, None]).detach()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = F.linear(x if self.b_pre is None else x - self.b_pre, self.W_enc)
        gate = (z + self.b_gate > 0).to(z.dtype)
        return gate * F.relu(self.r_mag.exp() * z + self.b_mag)


    def canonical_tensors(self) -> dict[str, torch.Tensor]:
        return {"W_enc": self.W_enc, "b_gate": self.b_gate, "b_mag": self.b_mag, "r_mag": self.r_mag,
                "W_dec": self.W_dec, "b_dec": self.b_dec,
                "b_pre": torch.zeros(self.d_in) if self.b_pre is None else self.b_pre}


class IdentityDictionary(Dictionary):
    """Every dimension is a feature and the error term is zero: the neuron baseline of Sparse Feature
    Circuits."""

    activation = "identity"

    def __init__(self, d_in: int):
        super().__init__()
        self.register_buffer("eye", torch.eye(d_in), persistent=False)

    @property
    def decoder_rows(self) -> torch.Tensor:
        return self.eye

    @property
    def encoder_rows(self) -> None:  # f = x: not ReLU-gated, edges use autograd
        return None

    @property
    def sparse(self) -> bool:  # every neuron is active
        return False

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f

    def canonical_tensors(self) -> dict[str, torch.Tensor]:
        return {"d_in": torch.tensor([float(self.eye.shape[0])])}
