"""The one place that splices node tensors into a model's forward pass (an nnsight trace).

At a submodule with a dictionary, its output x is split into *parts*: features ``f = encode(x)`` and the
error ``err = x - decode(f)``, so ``x = decode(f) + err``. Without a dictionary the single part is x
itself (component level). Every node of a circuit is one slice of a part.

Gradients: the node tensors are made autograd leaves, and the submodule's output is rebuilt as
``x + (c - c.detach()) + (x - x.detach())`` with ``c = decode(f) + err`` built from the leaves. Its value
is exactly x (so the splice is bit-exact), ``∂m/∂f`` and ``∂m/∂err`` are the partial derivatives with the
other part held fixed, and upstream sees the identity, as the exact splice implies. (With the naive
``decode(f) + (x - decode(f))`` the two paths through f cancel and ``f.grad`` is zero.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .dictionaries.base import Dictionary
from .models import Model, Submodule

Parts = dict[str, torch.Tensor]  # "act": features (or the output itself), "err": error term
Edit = Callable[[Submodule, torch.Tensor], "torch.Tensor | None"]


class Splice:
    """Which submodules carry nodes and how their parts make up the output."""

    def __init__(self, model: Model, dictionaries: dict[str, nn.Module] | None = None, submodules=None):
        self.model = model
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
        return ae.width if ae is not None else self.model.d_model

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

    # -- edits: what happens to each submodule's output during a trace ----------------------------
    def capture_edit(self, store: dict[str, Parts]) -> Edit:
        """Record every submodule's parts (no gradient), leave the output unchanged."""

        def edit(sub, x):
            store[sub.name] = {k: v.detach() for k, v in self.parts(sub, x.detach()).items()}
            return None

        return edit

    def leaf_edit(self, store: dict[str, Parts]) -> Edit:
        """Make every submodule's parts autograd leaves (stored), keeping the output value exact."""

        def edit(sub, x):
            leaves = {k: v.detach().requires_grad_(True) for k, v in self.parts(sub, x.detach()).items()}
            store[sub.name] = leaves
            c = self.compose(sub, leaves)
            return x.detach() + (c - c.detach()) + (x - x.detach())

        return edit


def run(model: Model, input_ids: torch.Tensor, edit: Edit | None, submodules: list[Submodule]) -> torch.Tensor:
    """One forward pass through nnsight; ``edit`` sees each submodule's output in execution order and
    may return a replacement. Returns the logits."""
    with model.nn.trace(input_ids=input_ids):
        if edit is not None:
            for sub in submodules:
                envoy = model.envoy(sub)
                out = envoy.output
                x = out[0] if sub.tuple_output else out
                new = edit(sub, x)
                if new is not None:
                    envoy.output = (new, *out[1:]) if sub.tuple_output else new
        logits = model.nn.output.logits.save()
    return logits
