"""Export to the attribution-graph JSON of circuit-tracer's viewer / Neuronpedia."""

from __future__ import annotations

import json
import math

import pytest

from featurecircuits.circuit import Circuit, discover
from featurecircuits.cli import main
from featurecircuits.export import (
    LINK_FIELDS,
    METADATA_FIELDS,
    NODE_FIELDS,
    QPARAMS_FIELDS,
    dictionaries_spec,
    example_circuit,
    load_example,
    read_scores,
    task_spec,
    to_attribution_graph,
    write_graph_files,
)
from featurecircuits.models import load_model
from featurecircuits.nodes import METRIC_NODE, NodeRef, parse_node_id
from tests.conftest import random_batch, random_dictionaries, tiny_model


def _check_fields(obj: dict, fields: dict, where: str) -> None:
    for name, kind in fields.items():
        assert name in obj, f"{where}: missing {name!r}"
        value = obj[name]
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        assert ok, f"{where}: {name!r} should be {kind.__name__}, got {value!r}"


def check_attribution_graph(data: dict) -> None:
    """Every required field with its type (circuit-tracer's graph models), unique ids, links between
    existing nodes, finite weights, one target logit, errors typed as errors, embeddings at layer "E"."""
    assert set(data) >= {"metadata", "qParams", "nodes", "links"}
    _check_fields(data["metadata"], METADATA_FIELDS, "metadata")
    assert all(isinstance(t, str) for t in data["metadata"]["prompt_tokens"])
    assert all(isinstance(t, str) for t in data["metadata"]["transcoder_list"])
    _check_fields(data["qParams"], QPARAMS_FIELDS, "qParams")
    for node in data["nodes"]:
        _check_fields(node, NODE_FIELDS, f"node {node.get('node_id')}")
        for opt in ("influence", "activation"):
            assert node.get(opt) is None or isinstance(node[opt], (int, float))
        if node["feature_type"] == "embedding":
            assert node["layer"] == "E"
        else:
            assert node["layer"].isdigit()
        assert 0 <= node["ctx_idx"] < len(data["metadata"]["prompt_tokens"])
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(set(ids)) == len(ids), "node ids are not unique"
    js = [n["jsNodeId"] for n in data["nodes"]]
    assert len(set(js)) == len(js), "jsNodeIds are not unique"
    for link in data["links"]:
        _check_fields(link, LINK_FIELDS, f"link {link}")
        assert link["source"] in set(ids) and link["target"] in set(ids)
    pairs = [(e["source"], e["target"]) for e in data["links"]]
    assert len(set(pairs)) == len(pairs)
    targets = [n for n in data["nodes"] if n["is_target_logit"]]
    assert len(targets) == 1 and targets[0]["feature_type"] == "logit"
    for n in data["nodes"]:
        if n.get("fc_id") and n["fc_id"] != METRIC_NODE and parse_node_id(n["fc_id"])[1] == "err":
            assert "error" in n["feature_type"]
    json.dumps(data, allow_nan=False)  # strict JSON: no NaN or Infinity anywhere


def _positional_circuit():
    model = tiny_model()
    dicts = random_dictionaries(model)
    batch = random_batch(n=1)
    c = discover(model, dicts, [batch], node_threshold=0.01, edge_threshold=0.0, aggregation="none")
    return model, dicts, batch, c


def _export(c: Circuit, batch, model) -> dict:
    ids = batch.clean[0].tolist()
    return to_attribution_graph(
        c, rows=[s.name for s in model.submodules], prompt="<b>a & b</b>", prompt_ids=ids,
        prompt_tokens=[f"t{i}" for i in ids], clean_answer=(int(batch.clean_answer[0]), "x"),
        patch_answer=(int(batch.patch_answer[0]), "y"), slug="tiny", scan="tiny")


def test_export_fields_ids_links_and_an_exact_round_trip():
    model, _, batch, c = _positional_circuit()
    assert len(c) > 5 and c.n_edges > 5
    data = _export(c, batch, model)
    check_attribution_graph(data)
    scores, weights = read_scores(data)
    assert weights == {(u, v): w for u, v, w in c.edges if w != 0}  # exact, every edge with a weight
    linked = {x for u, v, w in c.edges if w != 0 for x in (u, v)} | {n for n in c.nodes if n.startswith("embed")}
    assert scores == {n: c.graph.nodes[n]["score"] for n in c.graph.nodes if n in linked and c.score(n) != 0}
    # the metric is one logit node labelled with both answers; tokens and errors are their own nodes
    (logit,) = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert "“x”" in logit["clerp"] and "“y”" in logit["clerp"] and logit["is_target_logit"]
    assert logit["layer"] == str(len(model.submodules))
    tokens = [n for n in data["nodes"] if n["feature_type"] == "embedding"]
    assert {n["ctx_idx"] for n in tokens} == {parse_node_id(n).position for n in c.nodes if n.startswith("embed")}
    assert any("error" in n["feature_type"] for n in data["nodes"])
    # layer = the submodule's row in execution order; feature = layer * stride + index
    stride = data["metadata"]["featurecircuits"]["feature_stride"]
    assert stride == 64
    for n in data["nodes"]:
        if n["feature_type"] == "sparse autoencoder":
            sub, _, feat, pos = parse_node_id(n["fc_id"])
            layer = [s.name for s in model.submodules].index(sub)
            assert (n["layer"], n["feature"], n["ctx_idx"]) == (str(layer), layer * stride + feat, pos)
            assert n["node_id"] == f"{layer}_{feat}_{pos}"
    assert {"attn_0": 1, "mlp_0": 2, "resid_0": 3, "attn_1": 4} == {
        r: int(k) for k, r in data["metadata"]["featurecircuits"]["layer_rows"].items() if r in
        ("attn_0", "mlp_0", "resid_0", "attn_1")}


def test_export_rejects_summed_circuits_and_non_finite_weights():
    model, dicts, batch, c = _positional_circuit()
    summed = discover(model, dicts, [batch], node_threshold=0.01, edge_threshold=0.0, aggregation="sum")
    with pytest.raises(ValueError, match="aggregation 'none'"):
        _export(summed, batch, model)
    u, v = next(iter(c.graph.edges))
    c.graph.edges[u, v]["weight"] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        _export(c, batch, model)


def test_example_circuit_keeps_the_circuits_nodes_with_exact_edge_weights():
    model = tiny_model()
    dicts = random_dictionaries(model)
    batch = random_batch(n=3)
    circuit = discover(model, dicts, [batch], top_k=25, edge_threshold=0.0, aggregation="sum")
    one = batch[1]
    g = example_circuit(model, dicts, circuit, one, edge_threshold=0.0)
    keys = {parse_node_id(n)[:3] for n in circuit.nodes}
    assert g.nodes and all(parse_node_id(n)[:3] in keys and parse_node_id(n)[3] is not None for n in g.nodes)
    # every node of the circuit that scores non-zero on the example is there, with its score
    full = discover(model, dicts, [one], top_k=10**12, node_threshold=0.0, edge_threshold=0.0,
                    aggregation="none")
    expected = {n for n in full.nodes if parse_node_id(n)[:3] in keys}
    assert set(g.nodes) == expected
    for n in g.nodes:
        assert g.score(n) == pytest.approx(full.score(n), rel=1e-5, abs=1e-7)
    for u, v, w in g.graph.edges(data="weight"):
        assert w == pytest.approx(full.graph.edges[u, v]["weight"], rel=1e-4, abs=1e-6)
    among = [(u, v) for u, v in full.graph.edges if u in g.graph and v in g.graph]
    assert set(g.graph.edges) == set(among)


def test_graph_metadata_index_holds_one_entry_per_slug(tmp_path):
    model, _, batch, c = _positional_circuit()
    data = _export(c, batch, model)
    write_graph_files(data, tmp_path)
    other = dict(data, metadata=dict(data["metadata"], slug="other"))
    write_graph_files(other, tmp_path)
    write_graph_files(data, tmp_path)  # again: replaced, not duplicated
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert sorted(g["slug"] for g in index["graphs"]) == ["other", "tiny"]
    for g in index["graphs"]:
        _check_fields(g, METADATA_FIELDS, "graph-metadata entry")
    check_attribution_graph(json.loads((tmp_path / "tiny.json").read_text()))


@pytest.mark.organism
def test_cli_export_on_the_organism(tmp_path, capsys):
    circuit = tmp_path / "c.json"
    assert main(["discover", "--task", "sva-rc", "--n-examples", "8", "--top-k", "20", "--edge-threshold", "0.05",
                 "--out", str(circuit)]) == 0
    out = tmp_path / "graphs"
    assert main(["export", "--circuit", str(circuit), "--example", "3", "--format", "attribution-graph",
                 "--task", "sva-rc", "--n-examples", "8", "--out", str(out)]) == 0
    (path,) = [p for p in out.glob("*.json") if p.name != "graph-metadata.json"]
    data = json.loads(path.read_text())
    check_attribution_graph(data)
    from featurecircuits.tasks import make_task

    example = make_task("sva-rc", 8, seed=0)[3]
    assert data["metadata"]["prompt"] == example["clean_prefix"]
    assert "".join(data["metadata"]["prompt_tokens"]).replace(" ", "") == example["clean_prefix"].replace(" ", "")
    c = Circuit.from_json(circuit)
    exported = {n["fc_id"] for n in data["nodes"] if n.get("fc_id") not in (None, METRIC_NODE)}
    assert exported and exported <= set(c.nodes)  # the circuit keeps positions (every sva-rc prompt has one length)
    assert data["metadata"]["node_threshold"] == c.metadata.get("node_threshold")
    index = json.loads((out / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == [data["metadata"]["slug"]]
    # with the task recorded in the circuit's metadata, no flag is needed (the redesign's record or ours)
    model = load_model("organism")
    for record in ({"name": "sva-rc", "generator": "sva-rc", "n": 8, "seed": 0, "words": "organism"},
                   {"name": "sva-rc", "n": 8, "seed": 0}, "sva-rc"):
        assert load_example(task_spec({"task": record}), model, 3) == example
    # the dictionaries are the recorded spec, never a guess from the model's name
    assert dictionaries_spec({"model": "organism", "dictionary_sizes": {"resid_0": 1024}}) is None
    assert dictionaries_spec({"model": "organism", "dictionaries": "organism"}) == "organism"
    assert dictionaries_spec({"model": "organism", "dictionary_sizes": {}}) == "none"
    meta = json.loads(circuit.read_text())
    meta["metadata"]["task"] = {"name": "sva-rc", "n": 8, "seed": 0}
    circuit.write_text(json.dumps(meta))
    assert main(["export", "--circuit", str(circuit), "--example", "99", "--out", str(out)]) == 2
    assert "example 99 does not exist" in capsys.readouterr().err
    # node groups become the viewer's supernodes (members named without position match every position)
    features = [n for n in data["nodes"] if n["feature_type"] != "logit" and n.get("fc_id") not in (None, METRIC_NODE)
                and "/f" in n["fc_id"]][:2]
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"pair": [NodeRef.parse(n["fc_id"]).summed().id for n in features]}))
    assert main(["export", "--circuit", str(circuit), "--example", "3", "--task", "sva-rc", "--n-examples", "8",
                 "--groups", str(groups), "--out", str(tmp_path / "grouped")]) == 0
    (path,) = [p for p in (tmp_path / "grouped").glob("*.json") if p.name != "graph-metadata.json"]
    grouped = json.loads(path.read_text())
    check_attribution_graph(grouped)
    assert grouped["qParams"]["supernodes"] == [["pair", *[n["node_id"] for n in grouped["nodes"]
                                                           if n.get("fc_id") in {f["fc_id"] for f in features}]]]
    groups.write_text(json.dumps({"pair": ["resid_5/f1023@0"]}))
    assert main(["export", "--circuit", str(circuit), "--groups", str(groups), "--out", str(tmp_path / "g2")]) == 2
    assert "not in the circuit" in capsys.readouterr().err and not (tmp_path / "g2").exists()


@pytest.mark.organism
def test_a_circuit_exports_with_the_dictionaries_it_was_found_with(tmp_path, capsys):
    """Found on the organism with a Gemma Scope res set of its residual SAEs, a circuit records that spec;
    export and evaluate load exactly it (not the organism's default 19), and name the folder once it is gone."""
    import shutil

    import torch

    import featurecircuits as fc
    from featurecircuits.dictionaries import gemma_scope

    model = load_model("organism")
    original = fc.load_dictionaries("organism", model)

    def jumprelu(ae):  # Gemma Scope's form: the encoder bias absorbs b_pre
        return fc.SAE(ae.W_enc, ae.b_enc - ae.W_enc @ ae.b_pre, ae.W_dec, ae.b_dec, activation="jumprelu",
                      threshold=torch.full((ae.width,), 0.02))

    gemma_scope.save_suite({layer: jumprelu(original[f"resid_{layer}"]) for layer in range(model.n_layers)},
                           tmp_path / "gs-res")
    spec = f"gemma-scope-res:{tmp_path / 'gs-res'}"
    circuit = tmp_path / "c.json"
    assert main(["discover", "--task", "sva-rc", "--n-examples", "8", "--top-k", "15", "--dictionaries", spec,
                 "--out", str(circuit)]) == 0
    recorded = json.loads(circuit.read_text())["metadata"]
    assert recorded["dictionaries"] == f"gemma-scope-res:{(tmp_path / 'gs-res').resolve()}"
    assert main(["export", "--circuit", str(circuit), "--example", "1", "--out", str(tmp_path / "g")]) == 0
    (path,) = [p for p in (tmp_path / "g").glob("*.json") if p.name != "graph-metadata.json"]
    records = json.loads(path.read_text())["metadata"]["featurecircuits"]["dictionary_records"]
    assert [r["submodule"] for r in records] == [f"resid_{i}" for i in range(6)]
    assert {r["format"] for r in records} == {"gemma_scope"}
    assert main(["evaluate", "--circuit", str(circuit), "--task", "sva-rc", "--n-examples", "8"]) == 0
    capsys.readouterr()
    shutil.rmtree(tmp_path / "gs-res")
    for argv in (["export", "--circuit", str(circuit), "--out", str(tmp_path / "g2")],
                 ["evaluate", "--circuit", str(circuit), "--task", "sva-rc", "--n-examples", "8"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "gs-res no longer exists" in err and "Traceback" not in err


def test_an_exported_noising_example_follows_the_viewers_sign_and_has_no_dead_nodes():
    """Under noising the circuit's supporters of the clean answer score < 0; exported, the links into the
    target logit add up to a positive weight, nothing weighs 0 and every node has a link."""
    model, _, batch, c = _positional_circuit()
    assert c.metadata["direction"] == "noising"
    data = _export(c, batch, model)
    (logit,) = [n["node_id"] for n in data["nodes"] if n["is_target_logit"]]
    into = [link["weight"] for link in data["links"] if link["target"] == logit]
    assert into and sum(into) > 0
    assert sum(into) == pytest.approx(c.sign * sum(c.score(u) for u, v, _ in c.edges if v == METRIC_NODE))
    assert all(link["weight"] != 0 for link in data["links"])
    assert all(n["fc_score"] != 0 for n in data["nodes"] if n.get("fc_id") not in (None, METRIC_NODE))
    linked = {x for link in data["links"] for x in (link["source"], link["target"])}
    assert {n["node_id"] for n in data["nodes"]} == linked
