"""Labels: user files (CSV, JSON), Neuronpedia explanations, the priority of user over automatic labels,
and errors that name the file and line of a malformed entry."""

from __future__ import annotations

import gzip
import json

import pytest

from featurecircuits.errors import UsageError
from featurecircuits.features import Label, auto_label, merge_labels, read_labels, read_neuronpedia
from featurecircuits.features.labels import submodule_for_source


def _ctx(tokens, peak):
    return {"tokens": tokens, "peak": peak}


def test_auto_label_names_recurring_peak_tokens_and_the_top_promoted_token():
    card = {"top_contexts": [_ctx(["The", " pilots"], 1)] * 3 + [_ctx([" pilot", "s"], 0)],
            "promoted": [{"token": " were", "token_id": 5, "value": 2.0}]}
    assert auto_label(card) == "‹pilots› → were"
    card["top_contexts"] = [_ctx(["a"], 0), _ctx(["b"], 0), _ctx(["c"], 0), _ctx(["d"], 0)]
    card["promoted"] = None
    assert auto_label(card) == "‹a|b›"
    assert auto_label({"top_contexts": [], "promoted": None}) is None


def test_user_labels_from_csv_and_json(tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text('node_id,label\nresid_3/f12,plural subject\n\nmlp_0/f4@7,"commas, inside"\n')
    labels = read_labels(csv_file)
    assert labels == {"resid_3/f12": Label("plural subject", "user", f"{csv_file}:2"),
                      "mlp_0/f4": Label("commas, inside", "user", f"{csv_file}:4")}
    no_header = tmp_path / "plain.csv"
    no_header.write_text("embed/f1,the token 'a'\n")
    assert read_labels(no_header)["embed/f1"].text == "the token 'a'"
    js = tmp_path / "labels.json"
    js.write_text(json.dumps({"resid_3/f12": "from json", "attn_1/f0@2": "head"}))
    assert {k: v.text for k, v in read_labels(js).items()} == {"resid_3/f12": "from json", "attn_1/f0": "head"}


@pytest.mark.parametrize("content, where, what", [
    ("node_id,label\nresid_3/f12,ok\nresid_3/f13\n", ":3", "1 columns"),
    ("resid_3/f12,ok\nmlp_0/err,error term\n", ":2", "not a feature node id"),
    ("resid_3/f12,ok\nresid_3/zz,x\n", ":2", "malformed node id"),
    ("resid_3/f12,   \n", ":1", "empty"),
])
def test_malformed_csv_names_the_line(tmp_path, content, where, what):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UsageError, match=what) as err:
        read_labels(path)
    assert f"{path}{where}:" in str(err.value) and "node_id,label" in str(err.value)


def test_malformed_json_names_the_line_or_entry(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n "resid_3/f12": "ok",\n "resid_3/f13": oops\n}')
    with pytest.raises(UsageError, match=rf"{path}:3: not valid JSON"):
        read_labels(path)
    path.write_text(json.dumps({"resid_3/f12": 5}))
    with pytest.raises(UsageError, match="entry 'resid_3/f12'.*empty or not text"):
        read_labels(path)
    path.write_text(json.dumps(["resid_3/f12"]))
    with pytest.raises(UsageError, match="expected a JSON object"):
        read_labels(path)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_labels(tmp_path / "missing.csv")


def _np_records():
    return [
        {"modelId": "pythia-70m-deduped", "layer": "3-res-sm", "index": "12", "description": " plural nouns ",
         "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair"},
        {"modelId": "pythia-70m-deduped", "layer": "0-att-sm", "index": "5", "description": "previous token"},
        {"modelId": "pythia-70m-deduped", "layer": "3-res-sm", "index": "12", "description": "second opinion"},
        {"modelId": "gpt2-small", "layer": "3-res-jb", "index": "1", "description": "another model"},
    ]


def test_neuronpedia_exports_as_json_jsonl_gz_and_api_feature(tmp_path):
    array = tmp_path / "np.json"
    array.write_text(json.dumps(_np_records()))
    labels = read_neuronpedia(array, model_id="pythia-70m-deduped")
    assert {k: v.text for k, v in labels.items()} == {"resid_3/f12": "plural nouns", "attn_0/f5": "previous token"}
    assert labels["resid_3/f12"].source == "neuronpedia" and "gpt-4o-mini" in labels["resid_3/f12"].origin
    jsonl = tmp_path / "batch-0.jsonl.gz"
    jsonl.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in _np_records()).encode()))
    assert len(read_neuronpedia(jsonl)) == 3
    feature = tmp_path / "feature.json"
    feature.write_text(json.dumps({"modelId": "pythia-70m-deduped", "layer": "2-mlp-sm", "index": "9",
                                   "explanations": [{"description": "numbers"}], "activations": []}))
    assert read_neuronpedia(feature)["mlp_2/f9"].text == "numbers"
    mapped = read_neuronpedia(array, source_map={"3-res-sm": "z_3"}, model_id="pythia-70m-deduped")
    assert "z_3/f12" in mapped


def test_neuronpedia_errors_name_the_record(tmp_path):
    path = tmp_path / "np.jsonl"
    path.write_text(json.dumps(_np_records()[0]) + "\n" + json.dumps({"layer": "3-res-sm", "description": "x"}) + "\n")
    with pytest.raises(UsageError, match=rf"{path}:2: .*numeric 'index'"):
        read_neuronpedia(path)
    path.write_text(json.dumps([{"layer": "blocks.3.hook_z", "index": 1, "description": "x"}]))
    with pytest.raises(UsageError, match=r"entry 0: .*source_map"):
        read_neuronpedia(path)
    path.write_text('{"layer": "3-res-sm", "index": 1}\n{oops\n')
    with pytest.raises(UsageError, match=rf"{path}:2: not valid JSON"):
        read_neuronpedia(path)
    assert submodule_for_source("11-res-jb") == "resid_11"


def test_user_label_wins_over_neuronpedia_and_auto(tmp_path):
    auto = {"resid_3/f12": Label("‹x›", "auto"), "resid_3/f13": Label("‹y›", "auto")}
    np_ = {"resid_3/f12": Label("np", "neuronpedia"), "resid_3/f14": Label("np only", "neuronpedia")}
    user = {"resid_3/f12": Label("mine", "user")}
    for order in ((auto, np_, user), (user, np_, auto), (np_, user, auto)):
        merged = merge_labels(*order)
        assert {k: (v.text, v.source) for k, v in merged.items()} == {
            "resid_3/f12": ("mine", "user"), "resid_3/f13": ("‹y›", "auto"), "resid_3/f14": ("np only", "neuronpedia")}
