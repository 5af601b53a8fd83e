"""Feature files in the format of circuit-tracer's viewer (its pydantic ``feature_models.Model`` and the
fields its JavaScript reads), named as the exported graph's nodes number their features."""

from __future__ import annotations

import json
import os
import sys

import pytest

from featurecircuits.errors import UsageError
from featurecircuits.features import TokenCorpus, build_dossiers, write_feature_files
from featurecircuits.features.feature_files import EXAMPLE_FIELDS, FEATURE_FIELDS, quantile_values
from tests.features.dossier_helpers import PLANTED, WORDS, planted_dictionary, random_sequences, word_model

TARGET = os.environ.get("FEATURECIRCUITS_CIRCUIT_TRACER")


@pytest.fixture(scope="module")
def dossiers():
    model = word_model()
    dicts = {"embed": planted_dictionary(model)}
    return build_dossiers(model, dicts, TokenCorpus(random_sequences(40, seed=3)), k=4, progress=False)


def _check_types(data: dict) -> None:
    for field, kind in FEATURE_FIELDS.items():
        assert isinstance(data[field], kind) and not isinstance(data[field], bool), field
    assert all(isinstance(t, str) for t in data["top_logits"] + data["bottom_logits"])
    assert all(isinstance(v, float) for v in data["quantile_values"] + data["histogram"])
    for q in data["examples_quantiles"]:
        assert isinstance(q["quantile_name"], str)
        for ex in q["examples"]:
            for field, kind in EXAMPLE_FIELDS.items():
                assert isinstance(ex[field], kind), field
            assert len(ex["tokens"]) == len(ex["tokens_acts_list"]) and 0 <= ex["train_token_ind"] < len(ex["tokens"])


def test_files_carry_the_viewers_fields(dossiers, tmp_path):
    paths = write_feature_files(dossiers, tmp_path, ["embed/f0@3", "embed/f1", "embed/err@2", "logit"],
                                scan="tiny", layer_rows={"embed": 0}, feature_stride=6)
    assert sorted(p.name for p in paths) == ["0.json", "1.json"]
    assert all(p.parent == tmp_path / "features" / "tiny" for p in paths)
    for feat in (0, 1):
        data = json.loads((tmp_path / "features" / "tiny" / f"{feat}.json").read_text())
        _check_types(data)
        card = dossiers.card("embed", feat)
        assert data["index"] == feat and data["fc_id"] == f"embed/f{feat}"
        top = data["examples_quantiles"][0]
        assert top["quantile_name"] == "Top activations" and len(top["examples"]) == 4
        for ex in top["examples"]:
            assert ex["tokens"][ex["train_token_ind"]] == WORDS[PLANTED[feat] - 3]
        assert sum(data["histogram"]) == card["n_active"]
        assert data["act_max"] == card["act_max"] and data["activation_frequency"] == card["density"]
        assert len(data["quantile_values"]) == 100 and data["quantile_values"][-1] == data["act_max"]
        assert data["quantile_values"] == sorted(data["quantile_values"])
        assert data["top_logits"] == [t["token"] for t in card["promoted"]]


def test_graph_numbering_and_scan_come_from_the_exported_graph(dossiers, tmp_path):
    graph = {"metadata": {"scan": "org/tiny-model"}, "nodes": [
        {"node_id": "0_1_3", "feature": 7 * 6 + 1, "fc_id": "embed/f1@3"},
        {"node_id": "0_1_4", "feature": 7 * 6 + 1, "fc_id": "embed/f1@4"},
        {"node_id": "0_-1_2", "feature": -1, "fc_id": "embed/err@2"},
        {"node_id": "E_5_0", "feature": 0, "fc_id": None},
        {"node_id": "1_9_4", "feature": 9, "fc_id": "logit"}]}
    paths = write_feature_files(dossiers, tmp_path, graph=graph)
    assert paths == [tmp_path / "features" / "org" / "tiny-model" / "43.json"]
    with pytest.raises(UsageError, match="no dossiers for resid_0"):
        write_feature_files(dossiers, tmp_path, graph={"metadata": {"scan": "x"}, "nodes": [
            {"feature": 3, "fc_id": "resid_0/f3@1"}]})
    with pytest.raises(UsageError, match="cannot name a folder"):
        write_feature_files(dossiers, tmp_path, ["embed/f0"], scan="../up", layer_rows={"embed": 0})


def test_default_numbering_follows_the_export_rows(dossiers, tmp_path):
    paths = write_feature_files(dossiers, tmp_path, ["embed/f2"], scan="tiny")
    assert paths[0].name == "2.json"  # embed is row 0 of the model's submodules


def test_quantile_values_read_off_the_histogram():
    values = quantile_values({"counts": [0, 2, 2], "bin_width": 0.5}, 1.4)
    assert values[0] == pytest.approx(0.5 + 0.5 * 0.04 / 2)  # 1 % of 4 firings: 0.04 of bin 1's 2, linearly
    assert values[49] == pytest.approx(1.0) and values[-1] == 1.4
    assert quantile_values({"counts": [], "bin_width": 0.0}, 0.0) == [0.0] * 100


@pytest.mark.skipif(not TARGET, reason="set FEATURECIRCUITS_CIRCUIT_TRACER to a --target install of circuit-tracer")
def test_circuit_tracers_feature_model_accepts_the_files(dossiers, tmp_path):
    sys.path.insert(0, TARGET)
    try:
        from circuit_tracer.frontend.feature_models import Model
    finally:
        sys.path.remove(TARGET)
    paths = write_feature_files(dossiers, tmp_path, [f"embed/f{i}" for i in range(6)], scan="tiny",
                                layer_rows={"embed": 0})
    assert len(paths) == 6
    for path in paths:
        data = json.loads(path.read_text())
        parsed = Model.model_validate(data)
        assert parsed.index == data["index"] and len(parsed.examples_quantiles) == len(data["examples_quantiles"])
        assert parsed.histogram == data["histogram"]
