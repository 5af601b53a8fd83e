"""Dossiers and label files meet circuits: labels on the nodes (user over Neuronpedia over automatic), cards
on the page, feature files beside an exported graph, dossiers found in the cache by the dictionaries."""

from __future__ import annotations

import json
import re

import pytest

from featurecircuits.cli import main
from featurecircuits.features import cached_dossiers, open_corpus

pytestmark = pytest.mark.organism


@pytest.fixture(scope="module")
def dossier_folder(organism, tmp_path_factory):
    model, dicts = organism
    root = tmp_path_factory.mktemp("cache")
    corpus = open_corpus(None, model.tokenizer, model_name=model.name, max_sequences=128)
    dossiers = cached_dossiers(model, dicts, corpus, cache_root=root, progress=False)
    folder = root / "saved"
    dossiers.save(folder)
    return folder, root


def _page_cards(html: str) -> list[dict]:
    figures = json.loads(re.search(r"const FC_FIGURES = (\[.*?\]);\n", html, re.S).group(1).replace("<\\/", "</"))
    return [card for views in figures for fig in views
            for card in ((fig["layout"].get("meta") or {}).get("featurecircuits", {}).get("cards") or {}).values()]


def test_discover_labels_nodes_and_pages_show_cards(dossier_folder, tmp_path):
    folder, _ = dossier_folder
    circuit, page = tmp_path / "c.json", tmp_path / "c.html"
    args = ["discover", "--task", "sva-rc", "--n-examples", "8", "--top-k", "20", "--edge-threshold", "0.05"]
    assert main([*args, "--features", str(folder), "--out", str(circuit), "--html", str(page)]) == 0
    nodes = [n for n in json.loads(circuit.read_text())["nodes"] if "/f" in n["id"]]
    assert nodes and all(n["label_source"] == "auto" and n["label"] for n in nodes)
    chosen = nodes[0]["id"].split("@")[0]
    labels = tmp_path / "labels.csv"
    labels.write_text(f"node_id,label\n{chosen},my subject feature\n")
    assert main([*args, "--features", str(folder), "--labels", str(labels), "--out", str(tmp_path / "l.json"),
                 "--html", str(tmp_path / "l.html")]) == 0
    relabelled = {n["id"]: n for n in json.loads((tmp_path / "l.json").read_text())["nodes"]}
    user = [n for i, n in relabelled.items() if i.split("@")[0] == chosen]
    assert user and all(n["label"] == "my subject feature" and n["label_source"] == "user" for n in user)
    html = (tmp_path / "l.html").read_text()
    assert "my subject feature" in html
    cards = _page_cards(html)
    assert cards and max(len(c["contexts"]) for c in cards) >= 5  # distinct contexts from the corpus
    assert all(not c["task_prompts"] and c["corpus"] == "organism" for c in cards)
    assert any(c["promoted"] for c in cards) and all("histogram" in c and c["density"] is not None for c in cards)


def test_export_writes_labels_and_the_viewers_feature_files(dossier_folder, tmp_path):
    folder, _ = dossier_folder
    circuit = tmp_path / "c.json"
    assert main(["discover", "--task", "sva-rc", "--n-examples", "8", "--top-k", "15", "--features", "none",
                 "--out", str(circuit)]) == 0
    feature = next(n["id"] for n in json.loads(circuit.read_text())["nodes"] if n["id"].startswith("resid_")
                   and "/f" in n["id"])
    sub, index = feature.split("@")[0].split("/f")
    layer = int(sub.split("_")[1])
    neuronpedia = tmp_path / "np.json"
    neuronpedia.write_text(json.dumps([{"modelId": "organism", "layer": f"{layer}-res", "index": index,
                                        "description": "a neuronpedia explanation"}]))
    out = tmp_path / "graphs"
    assert main(["export", "--circuit", str(circuit), "--example", "1", "--features", str(folder),
                 "--labels", str(neuronpedia), "--out", str(out)]) == 0
    (graph,) = [p for p in out.glob("*.json") if p.name != "graph-metadata.json"]
    data = json.loads(graph.read_text())
    clerps = {n["fc_id"]: n["clerp"] for n in data["nodes"] if n.get("fc_id")}
    labelled = [c for i, c in clerps.items() if i.split("@")[0] == feature.split("@")[0]]
    assert labelled and all("a neuronpedia explanation" in c for c in labelled)
    features = [n for n in data["nodes"] if n.get("fc_feature_type") == "sparse autoencoder"]
    assert features and all(n["feature_type"] == "cross layer transcoder" for n in features)
    files = {int(p.stem) for p in (out / "features" / "organism").glob("*.json")}
    assert files == {n["feature"] for n in features}
    card = json.loads(next((out / "features" / "organism").glob("*.json")).read_text())
    assert card["examples_quantiles"] and card["top_logits"] and 0 < card["activation_frequency"] <= 1


def test_cached_dossiers_are_found_by_the_dictionaries(organism, dossier_folder):
    from featurecircuits.features.circuits import find_dossiers

    model, dicts = organism
    _, root = dossier_folder
    found = find_dossiers(model, dicts, cache_root=root)
    assert found is not None and set(found.states) == set(dicts)
    other = {k: v for k, v in dicts.items() if k != "resid_0"}  # a subset is covered too
    assert find_dossiers(model, other, cache_root=root) is not None
    assert find_dossiers(model, dicts, cache_root=root / "elsewhere") is None
