"""The one place that splices node tensors into a model's forward pass (an nnsight trace).

At a submodule with a dictionary, its output x (for ``z_l``: the attention output projection's input)
is split into *parts*: features ``f = encode(x)`` and the error ``err = x - decode(f)``, so
``x = decode(f) + err``. Without a dictionary the single part is x itself (component level). Every node
of a circuit is one slice of a part.

Gradients: the node tensors are made autograd leaves, and the submodule's output is rebuilt as
``x + (c - c.detach()) + (x - x.detach())`` with ``c = decode(f) + err`` built from the leaves. Its value
is exactly x (so the splice is bit-exact), ``∂m/∂f`` and ``∂m/∂err`` are the partial derivatives with the
other part held fixed, and upstream sees the identity, as the exact splice implies. (With the naive
``decode(f) + (x - decode(f))`` the two paths through f cancel and ``f.grad`` is zero.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .dictionaries.base import Dictionary
from .models import Model, Submodule
from .sparse import coo

Parts = dict[str, torch.Tensor]  # "act": features (or the output itself), "err": error term
Edit = Callable[[Submodule, torch.Tensor], "torch.Tensor | None"]


@dataclass
class SparseLeaf:
    """A sparse dictionary's features on the base run as an autograd leaf of their ``values`` at ``indices``
    (ndim, nnz): every feature active in the base run or in the other (source) run, whose values there are
    ``source``."""

    indices: torch.Tensor
    values: torch.Tensor  # requires grad
    source: torch.Tensor
    shape: tuple[int, ...]


def _flat(indices: torch.Tensor, shape) -> torch.Tensor:
    """Row-major flat positions of (ndim, nnz) indices."""
    flat = torch.zeros_like(indices[0])
    for dim, size in enumerate(shape):
        flat = flat * size + indices[dim]
    return flat


def _unflatten(flat: torch.Tensor, shape) -> torch.Tensor:
    """(ndim, nnz) indices of row-major flat positions (sorted flat positions give coalesced indices)."""
    out = []
    for size in reversed(shape):
        out.append(flat % size)
        flat = flat // size
    return torch.stack(out[::-1])


def _active(ae, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]]:
    """(shape of the features, (sorted row-major flat positions of the active features, their values)). The
    dense (…, width) feature tensor lives only inside this call: it is the largest tensor of the sparse path."""
    f = ae.encode(x)
    flat = f.reshape(-1).nonzero().squeeze(1)
    return tuple(f.shape), (flat, f.reshape(-1)[flat])


def _at(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``values`` at the positions of ``query`` in the sorted ``keys`` (0 where a query is not a key)."""
    if keys.numel() == 0:
        return values.new_zeros(query.shape)
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return torch.where(keys[pos] == query, values[pos], values.new_zeros(()))


class Splice:
    """Which submodules carry nodes and how their parts make up the output."""

    def __init__(self, model: Model, dictionaries: dict[str, nn.Module] | None = None, submodules=None, *,
                 sparse: bool = False):
        self.model = model
        self.sparse = sparse  # gradient methods store features of sparse dictionaries as COO tensors
        dictionaries = {model.submodule(k).name: v for k, v in (dictionaries or {}).items()}
        for name, ae in dictionaries.items():
            if not isinstance(ae, Dictionary):
                raise ValueError(f"the dictionary for {name} is a {type(ae).__name__}, not a featurecircuits "
                                 "Dictionary; load it with load_dictionary, or convert a dictionary_learning object "
                                 "with featurecircuits.dictionaries.dictionary_learning.convert")
        if submodules is None:
            submodules = list(dictionaries) if dictionaries else None
        self.submodules: list[Submodule] = model.select(submodules)
        missing = [s.name for s in self.submodules if dictionaries and s.name not in dictionaries]
        if missing:
            raise ValueError(f"no dictionary for submodule(s) {', '.join(missing)}; dictionaries are "
                             f"loaded for {', '.join(dictionaries) or 'none'}")
        self.dictionaries = dictionaries

    @property
    def level(self) -> str:
        return "feature" if self.dictionaries else "component"

    def has_features(self, sub: Submodule) -> bool:
        return sub.name in self.dictionaries

    def width(self, sub: Submodule) -> int:
        """Number of nodes per position in the "act" part."""
        ae = self.dictionaries.get(sub.name)
        return ae.width if ae is not None else self.model.width(sub)

    def parts(self, sub: Submodule, x: torch.Tensor) -> Parts:
        ae = self.dictionaries.get(sub.name)
        if ae is None:
            return {"act": x}
        f = ae.encode(x)
        return {"act": f, "err": x - ae.decode(f)}

    def compose(self, sub: Submodule, parts: Parts) -> torch.Tensor:
        ae = self.dictionaries.get(sub.name)
        if ae is None:
            return parts["act"]
        return ae.decode(parts["act"]) + parts["err"]

    def patched(self, sub: Submodule, x: torch.Tensor, base: Parts, new: Parts) -> torch.Tensor:
        """x changed by exactly what replacing the ``base`` parts by ``new`` parts changes."""
        return x + (self.compose(sub, new) - self.compose(sub, base))

    def sparse_dictionary(self, sub: Submodule):
        """The submodule's dictionary when its features are worth storing sparsely, else None."""
        ae = self.dictionaries.get(sub.name)
        return ae if ae is not None and ae.sparse else None

    # -- edits: what happens to each submodule's output during a trace ----------------------------
    def capture_edit(self, store: dict[str, Parts]) -> Edit:
        """Record every submodule's parts (no gradient), leave the output unchanged."""

        def edit(sub, x):
            store[sub.name] = {k: v.detach() for k, v in self.parts(sub, x.detach()).items()}
            return None

        return edit

    def sparse_capture_edit(self, store: dict[str, Parts]) -> Edit:
        """Like ``capture_edit``, with a sparse dictionary's features stored as a COO tensor (and its error
        term computed from the active features only)."""

        def edit(sub, x):
            ae = self.sparse_dictionary(sub)
            if ae is None:
                store[sub.name] = {k: v.detach() for k, v in self.parts(sub, x.detach()).items()}
                return None
            x = x.detach()
            shape, (flat, vals) = _active(ae, x)
            idx = _unflatten(flat, shape)
            store[sub.name] = {"act": coo(idx, vals, shape), "err": x - ae.decode_sparse(idx, vals, shape)}
            return None

        return edit

    def sparse_leaf_edit(self, store: dict, sources: dict[str, Parts]) -> Edit:
        """Like ``leaf_edit``, with a sparse dictionary's features a :class:`SparseLeaf` over the features
        active here or in ``sources`` (the other run's parts from ``sparse_capture_edit``)."""

        def edit(sub, x):
            ae = self.sparse_dictionary(sub)
            if ae is None:
                return self.leaf_edit(store)(sub, x)
            xd = x.detach()
            shape, (here, here_values) = _active(ae, xd)  # the dense features are dropped inside
            src = sources[sub.name]["act"]
            there = _flat(src._indices(), shape)  # sorted: the source tensor is coalesced
            flat = torch.cat([here, there]).unique()  # sorted union, without a dense scatter or masks
            idx = _unflatten(flat, shape)
            values = _at(here, here_values, flat).requires_grad_(True)
            err = (xd - ae.decode_sparse(idx, values.detach(), shape)).requires_grad_(True)
            store[sub.name] = {"act": SparseLeaf(idx, values, _at(there, src._values(), flat), shape), "err": err}
            c = ae.decode_sparse(idx, values, shape) + err
            return xd + (c - c.detach()) + (x - x.detach())

        return edit

    def leaf_edit(self, store: dict[str, Parts]) -> Edit:
        """Make every submodule's parts autograd leaves (stored), keeping the output value exact."""

        def edit(sub, x):
            leaves = {k: v.detach().requires_grad_(True) for k, v in self.parts(sub, x.detach()).items()}
            store[sub.name] = leaves
            c = self.compose(sub, leaves)
            return x.detach() + (c - c.detach()) + (x - x.detach())

        return edit


def run(model: Model, input_ids: torch.Tensor, edit: Edit | None, submodules: list[Submodule], *,
        logits_to_keep: int = 0, forward_kwargs: dict | None = None,
        skip: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """One forward pass through nnsight; ``edit`` sees each submodule's output in execution order and
    may return a replacement. Returns the logits — of the last ``logits_to_keep`` positions only when it
    is positive (the unembedding of a large vocabulary at every position is most of a forward).
    ``skip=(l, h)``: decoder layers below ``l`` are not run and layer ``l`` is fed ``h`` (the hidden state
    that layer ``l - 1`` outputs, e.g. cached from an unpatched run); ``submodules`` must then all lie in
    layer ``l`` or above (nnsight would wait for a module that never runs)."""
    if skip is not None and any(s.layer < skip[0] for s in submodules):
        below = [s.name for s in submodules if s.layer < skip[0]]
        raise ValueError(f"run(skip=({skip[0]}, …)) would skip the layers of {', '.join(below)}")
    kwargs = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
    kwargs.update(forward_kwargs or {})  # e.g. past_key_values: run a prompt's suffix over a cached prefix
    with model.nn.trace(input_ids=input_ids, **kwargs):
        for layer in range(skip[0] if skip is not None else 0):
            model.layer_envoy(layer).skip(skip[1])  # only the last one's output is read, by layer l
        if edit is not None:
            for sub in submodules:
                envoy = model.envoy(sub)
                if sub.reads_input:  # z_l: the attention output projection's input
                    new = edit(sub, envoy.input)
                    if new is not None:
                        envoy.input = new
                    continue
                out = envoy.output
                x = out[0] if sub.tuple_output else out
                new = edit(sub, x)
                if new is not None:
                    envoy.output = (new, *out[1:]) if sub.tuple_output else new
        logits = model.nn.output.logits.save()
    return logits
