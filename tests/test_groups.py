"""Node groups drawn collapsed: scores and edges add up, per position where positions are kept."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from featurecircuits.circuit import Circuit
from featurecircuits.cli import main
from featurecircuits.errors import UsageError
from featurecircuits.groups import check_groups, grouped, read_groups
from featurecircuits.nodes import METRIC_NODE, NodeRef
from featurecircuits.plots import circuits_page

SUBS = ["embed"] + [f"{k}_{i}" for i in range(3) for k in ("attn", "mlp", "resid")]
GROUPS = {"subject": ["resid_1/f1", "resid_1/f2"]}


def _circuit() -> Circuit:
    g = nx.DiGraph()
    g.add_node(METRIC_NODE, kind="metric", score=1.0)
    for node, score in [("resid_1/f1@2", 0.5), ("resid_1/f2@2", -0.2), ("resid_1/f1@3", 0.1),
                        ("attn_2/f5@3", 0.3), ("mlp_0/err@2", 0.05)]:
        ref = NodeRef.parse(node)
        g.add_node(node, kind=ref.kind, score=score, submodule=ref.submodule, feature=ref.feature,
                   position=ref.position, layer=ref.layer)
    g.add_weighted_edges_from([("mlp_0/err@2", "resid_1/f1@2", 0.4), ("resid_1/f1@2", "attn_2/f5@3", 1.0),
                               ("resid_1/f2@2", "attn_2/f5@3", 0.5), ("resid_1/f1@2", "resid_1/f2@2", 9.0),
                               ("resid_1/f1@3", "attn_2/f5@3", 0.25), ("attn_2/f5@3", METRIC_NODE, 2.0)])
    return Circuit(g, {"model": "synthetic", "method": "relp", "submodules": SUBS, "aggregation": "none"})


def test_a_group_collapses_per_position_onto_its_strongest_member():
    c = grouped(_circuit(), GROUPS)
    assert sorted(c.nodes) == ["attn_2/f5@3", "mlp_0/err@2", "resid_1/f1@2", "resid_1/f1@3"]
    head = c.graph.nodes["resid_1/f1@2"]
    assert head["score"] == pytest.approx(0.3) and head["members"] == ["resid_1/f1@2", "resid_1/f2@2"]
    assert c.label("resid_1/f1@2") == "subject" and head["label_source"] == "group"
    assert c.graph.nodes["resid_1/f1@3"]["members"] == ["resid_1/f1@3"]
    # edges add up; the edge between two members is gone; edges of other nodes are unchanged
    assert c.graph.edges["resid_1/f1@2", "attn_2/f5@3"]["weight"] == pytest.approx(1.5)
    assert c.graph.edges["mlp_0/err@2", "resid_1/f1@2"]["weight"] == pytest.approx(0.4)
    assert c.graph.edges["attn_2/f5@3", METRIC_NODE]["weight"] == 2.0 and c.n_edges == 4


def test_the_summed_view_collapses_into_one_node_and_totals_are_kept():
    original = _circuit()
    c = grouped(original.summed(), GROUPS)
    assert c.graph.nodes["resid_1/f1"]["score"] == pytest.approx(0.4)
    assert c.graph.edges["resid_1/f1", "attn_2/f5"]["weight"] == pytest.approx(1.75)
    assert sum(c.score(n) for n in c.nodes) == pytest.approx(sum(original.score(n) for n in original.nodes))
    # a positional member names its summed node in the summed view
    alone = grouped(original.summed(), {"one": ["resid_1/f2@2"]})
    assert alone.graph.nodes["resid_1/f2"]["members"] == ["resid_1/f2"]


def test_groups_that_name_no_node_or_a_node_twice_are_refused(tmp_path):
    with pytest.raises(UsageError, match=r"group 'x': resid_2/f9 not in the circuit"):
        check_groups(_circuit(), {"x": ["resid_1/f1", "resid_2/f9"]})
    bad = tmp_path / "g.json"
    for text, words in [("{oops", "not valid JSON"), ('["resid_1/f1"]', "expected a JSON object"),
                        ('{"a": ["resid_1/f1"], "b": ["resid_1/f1"]}', "in two groups, 'a' and 'b'"),
                        ('{"a": ["resid_1/f1"], "b": ["resid_1/f1@2"]}', "'resid_1/f1@2' is in two groups"),
                        ('{"a": ["resid_1/fx"]}', "malformed node id 'resid_1/fx'"),
                        ('{"a": ["banana"]}', "unknown submodule 'banana'")]:
        bad.write_text(text)
        with pytest.raises(UsageError, match=words):
            read_groups(bad)
    bad.write_text('{"a": ["resid_1/f1@2", "resid_1/f1@3", "resid_1/f1@2"]}')  # one group: fine
    assert read_groups(bad) == {"a": ["resid_1/f1@2", "resid_1/f1@3", "resid_1/f1@2"]}
    with pytest.raises(UsageError, match="in two groups"):
        check_groups(_circuit(), {"a": ["resid_1/f1"], "b": ["resid_1/f1@3"]})
    with pytest.raises(UsageError, match="cannot read it"):
        read_groups(tmp_path / "missing.json")


def test_the_page_and_plot_draw_groups(tmp_path, capsys):
    page = circuits_page({"c": _circuit()}, tmp_path / "c.html", groups=GROUPS).read_text()
    assert r'"<b>subject<\/b><br>2 nodes"' in page and r'"<b>subject<\/b><br>1 node"' in page  # at @2, @3
    assert "members: resid_1/f1@2, resid_1/f2@2" in page
    circuit, groups, out = tmp_path / "c.json", tmp_path / "g.json", tmp_path / "p.html"
    _circuit().to_json(circuit)
    groups.write_text(json.dumps({"subject": ["resid_1/f1", "resid_2/f9"]}))
    assert main(["plot", "--circuit", str(circuit), "--groups", str(groups), "--out", str(out)]) == 2
    assert "resid_2/f9 not in the circuit" in capsys.readouterr().err and not out.exists()
    groups.write_text(json.dumps(GROUPS))
    assert main(["plot", "--circuit", str(circuit), "--groups", str(groups), "--out", str(out)]) == 0
    assert "group subject (2 nodes)" in out.read_text()
    assert main(["plot", "--circuit", str(circuit), "--groups", str(groups), "--out", str(groups)]) == 2
    assert "--out" in capsys.readouterr().err and json.loads(groups.read_text()) == GROUPS


def test_groups_become_the_viewers_supernodes():
    from featurecircuits.groups import supernodes

    nodes = [{"node_id": "1_1_2", "fc_id": "resid_1/f1@2"}, {"node_id": "1_2_2", "fc_id": "resid_1/f2@2"},
             {"node_id": "1_1_3", "fc_id": "resid_1/f1@3"}, {"node_id": "0_-1_2", "fc_id": "mlp_0/err@2"},
             {"node_id": "E_5_0", "fc_id": None},
             {"node_id": "L_9_3", "fc_id": METRIC_NODE}]
    assert supernodes(nodes, {**GROUPS, "none": ["attn_2/f5"], "error": ["mlp_0/err@2"]}) == [
        ["subject", "1_1_2", "1_2_2", "1_1_3"], ["error", "0_-1_2"]]
