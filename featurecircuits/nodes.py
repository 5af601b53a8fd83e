"""Node references: what a node of a circuit is, parsed once. Torch-free.

A node is one slice of a submodule's *part*: a feature of its dictionary (``resid_3/f1234``), its error
term (``mlp_2/err``) or, without a dictionary, the component output itself (``attn_1``); ``@5`` when
positions are kept. The metric node is ``logit``. :class:`NodeRef` is a named tuple
``(submodule, part, feature, position)``, so code that unpacks node tuples keeps working, and every place
that needs "what kind of node is this" asks it instead of splitting strings.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from .registry import KINDS, unknown

METRIC_NODE = "logit"
NODE_KINDS = ("feature", "error", "component")

_ID = re.compile(r"^(?P<sub>[a-z]+(?:_\d+)?)(?:/(?P<part>err|f(?P<feat>\d+)))?(?:@(?P<pos>\d+))?$")
_SUB = re.compile(r"^(?P<kind>[a-z]+)(?:_(?P<layer>\d+))?$")


def submodule_kind_layer(name: str) -> tuple[str, int]:
    """``resid_3`` → (``resid``, 3); ``embed`` → (``embed``, -1). Unknown kinds are an error."""
    m = _SUB.match(name)
    kind = m["kind"] if m else name
    if kind not in KINDS or (m is not None and (m["layer"] is None) != (kind == "embed")):
        raise unknown("submodule", name, ("embed", *(f"{k}_<layer>" for k in KINDS if k != "embed")))
    return kind, (-1 if m["layer"] is None else int(m["layer"]))


class NodeRef(NamedTuple):
    """``(submodule, part, feature, position)``: part ``"act"`` (a feature, or a component's output) or
    ``"err"``; feature ``None`` for components and error terms; position ``None`` when summed."""

    submodule: str
    part: str
    feature: int | None
    position: int | None

    @classmethod
    def parse(cls, text: str) -> NodeRef:
        """The node an id names (ids are parsed once: the result is cached)."""
        if not isinstance(text, str):
            raise ValueError(f"malformed node id {text!r} (expected a string such as 'resid_3/f12')")
        return _parse(text)

    @property
    def id(self) -> str:
        sub, part, feat, pos = self
        name = f"{sub}/err" if part == "err" else f"{sub}/f{feat}" if feat is not None else sub
        return name if pos is None else f"{name}@{pos}"

    @property
    def kind(self) -> str:
        """``feature``, ``error`` or ``component``."""
        return "error" if self.part == "err" else "feature" if self.feature is not None else "component"

    @property
    def submodule_kind(self) -> str:
        return submodule_kind_layer(self.submodule)[0]

    @property
    def layer(self) -> int:
        return submodule_kind_layer(self.submodule)[1]

    def summed(self) -> NodeRef:
        """The same node with its position dropped (the node of a circuit summed over positions)."""
        return self._replace(position=None)


@lru_cache(maxsize=1 << 16)
def _parse(text: str) -> NodeRef:
    m = _ID.match(text)
    if not m:
        raise ValueError(f"malformed node id {text!r} (expected e.g. 'resid_3/f12', 'mlp_0/err@4', 'attn_1')")
    feat = int(m["feat"]) if m["feat"] is not None else None
    pos = int(m["pos"]) if m["pos"] is not None else None
    return NodeRef(m["sub"], "err" if m["part"] == "err" else "act", feat, pos)


def node_id(node: tuple) -> str:
    """The id of a node tuple ``(submodule, part, feature, position)``."""
    return NodeRef(*node).id


def parse_node_id(text: str) -> NodeRef:
    return NodeRef.parse(text)


def node_kind(text: str) -> str:
    """``metric`` for the metric node, else the kind of the node the id names."""
    return "metric" if text == METRIC_NODE else NodeRef.parse(text).kind


def execution_order(names) -> list[str]:
    """Submodule names in a model's execution order: by layer, then by :data:`KINDS` (embed, z, attn, mlp,
    resid — the order in which a layer computes its parts, as ``Model.all_submodules`` lists them)."""
    def key(name):
        kind, layer = submodule_kind_layer(name)
        return (layer, KINDS.index(kind))

    return sorted(set(names), key=key)
