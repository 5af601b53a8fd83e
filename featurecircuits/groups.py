"""Node groups: named sets of circuit nodes drawn collapsed into one node, as the Sparse Feature Circuits
figures draw "subject number features" as one box.

A groups file is JSON, ``{"group name": ["resid_3/f12", "attn_3/f7@5", ...], ...}``. A member names a node
as the circuit writes it; a member without a position (``resid_3/f12``) stands for that feature at every
position. In a view with positions, a group collapses per position (one node for the group's members at
each token); in the summed view, into one node. The collapsed node takes the place (row and column) of its
member with the largest |score|, its score is the sum of its members' scores, and its edges are the sums of
theirs; edges between members of one group disappear. Grouping changes how a circuit is drawn, not the
circuit: files written by ``discover`` never hold groups.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import networkx as nx

from .circuit import Circuit
from .errors import UsageError
from .nodes import METRIC_NODE, NodeRef, submodule_kind_layer

__all__ = ["check_groups", "grouped", "read_groups", "supernodes"]


def read_groups(path: str | Path) -> dict[str, list[str]]:
    """A groups file (see the module docstring), checked: names and ids are strings, each id well formed
    and in one group only."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"--groups {path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--groups {path}: not valid JSON ({e}); expected {{\"name\": [\"resid_3/f12\", ...]}}") \
            from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise UsageError(f"--groups {path}: expected a JSON object of group name → list of node ids, "
                         f"e.g. {{\"subject\": [\"resid_3/f12\", \"attn_3/f7\"]}}")
    for name, ids in data.items():
        for i in ids:
            try:
                submodule_kind_layer(NodeRef.parse(i).submodule)  # a known submodule too
            except ValueError as e:
                raise UsageError(f"--groups {path}: group {name!r}: {e}") from None
    _check_disjoint(data, f"--groups {path}")
    return {name: list(ids) for name, ids in data.items()}


def _check_disjoint(groups: Mapping[str, Sequence[str]], where: str) -> None:
    """A feature (or error term) belongs to one group at most, whatever positions its members name: the summed
    view would otherwise draw it in whichever group came last."""
    seen: dict[str, str] = {}
    for name, ids in groups.items():
        for i in ids:
            key = NodeRef.parse(i).summed().id
            if seen.setdefault(key, name) != name:
                raise UsageError(f"{where}: {i!r} is in two groups, {seen[key]!r} and {name!r} (as {key!r}); a node "
                                 "belongs to one group")


def _membership(circuit: Circuit, groups: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """node of ``circuit`` → its group: the node's own id, or its id without position, named in a group (in
    a summed view a positional member names its summed node)."""
    named = {}
    for name, ids in groups.items():
        for i in ids:
            ref = NodeRef.parse(i)
            named[ref.summed().id if circuit.metadata.get("aggregation") != "none" else i] = name
    return {n: named[n] if n in named else named[circuit.ref(n).summed().id] for n in circuit.nodes
            if n in named or circuit.ref(n).summed().id in named}


def check_groups(circuit: Circuit, groups: Mapping[str, Sequence[str]], where: str = "--groups") -> None:
    """Every member names a node of the circuit (at some position, for a member without one), and no node is in
    two groups."""
    _check_disjoint(groups, where)
    present = set(circuit.nodes) | {circuit.ref(n).summed().id for n in circuit.nodes}
    for name, ids in groups.items():
        missing = [i for i in ids if i not in present and NodeRef.parse(i).summed().id not in present]
        if missing:
            raise UsageError(f"{where}: group {name!r}: {', '.join(missing[:5])}"
                             f"{' …' if len(missing) > 5 else ''} not in the circuit")


def grouped(circuit: Circuit, groups: Mapping[str, Sequence[str]]) -> Circuit:
    """A view of ``circuit`` with each group collapsed (per position where positions are kept): the
    collapsed node keeps its strongest member's id and place, with the group's name as its label, the sum of
    its members' scores, and ``members`` listing them."""
    member_of = _membership(circuit, groups)
    by_key: dict[tuple[str, int | None], list[str]] = {}
    for n, name in member_of.items():
        by_key.setdefault((name, circuit.ref(n).position), []).append(n)
    rep = {}
    g = nx.DiGraph()
    g.add_node(METRIC_NODE, **circuit.graph.nodes[METRIC_NODE])
    for (name, _), members in by_key.items():
        head = max(members, key=lambda m: (abs(circuit.score(m)), m))
        rep.update(dict.fromkeys(members, head))
        g.add_node(head, **{**circuit.graph.nodes[head], "score": sum(circuit.score(m) for m in members),
                            "label": name, "label_source": "group", "members": sorted(members),
                            "top_contexts": None})
    for n in circuit.nodes:
        if n not in rep:
            g.add_node(n, **circuit.graph.nodes[n])
    for u, v, w in circuit.edges:
        su, sv = rep.get(u, u), rep.get(v, v)
        if su != sv:  # edges inside a group disappear
            g.add_edge(su, sv, weight=g.edges[su, sv]["weight"] + w if g.has_edge(su, sv) else w)
    return Circuit(g, dict(circuit.metadata))


def supernodes(nodes: Sequence[dict], groups: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The groups as an attribution graph's ``qParams.supernodes`` (``[name, node_id, …]`` each, the viewers'
    format) over its exported ``nodes`` (each with our id as ``fc_id``); groups with no exported member are
    left out."""
    out = []
    for name, ids in groups.items():
        wanted = set(ids)
        members = [n["node_id"] for n in nodes if n.get("fc_id") not in (None, METRIC_NODE)
                   and (n["fc_id"] in wanted or NodeRef.parse(n["fc_id"]).summed().id in wanted)]
        if members:
            out.append([name, *members])
    return out
