"""Node references and the dictionaries spec grammar: parsed once, written back exactly."""

from __future__ import annotations

import pytest

from featurecircuits.dictionaries.spec import SpecPart, format_spec, parse_spec
from featurecircuits.nodes import METRIC_NODE, NodeRef, execution_order, node_kind


def test_node_refs_parse_and_say_what_a_node_is():
    cases = {"resid_3/f12": ("resid_3", "act", 12, None, "feature", "resid", 3),
             "mlp_0/err@4": ("mlp_0", "err", None, 4, "error", "mlp", 0),
             "embed@2": ("embed", "act", None, 2, "component", "embed", -1),
             "z_5/f0@0": ("z_5", "act", 0, 0, "feature", "z", 5)}
    for text, (sub, part, feat, pos, kind, sub_kind, layer) in cases.items():
        ref = NodeRef.parse(text)
        assert ref == (sub, part, feat, pos) and ref.id == text
        assert (ref.kind, ref.submodule_kind, ref.layer) == (kind, sub_kind, layer)
        assert ref.summed().position is None and ref.summed().id == text.split("@")[0]
    assert node_kind(METRIC_NODE) == "metric" and node_kind("attn_1") == "component"
    for bad in ("resid 3/f", "resid_3/g2", "", "mlp_1/f-1"):
        with pytest.raises(ValueError, match="malformed node id"):
            NodeRef.parse(bad)
    with pytest.raises(ValueError, match="unknown submodule 'attention_1'; valid: embed, z_<layer>"):
        NodeRef.parse("attention_1/f2").layer  # noqa: B018


def test_execution_order_is_layer_then_the_order_a_layer_computes_its_parts():
    assert execution_order(["resid_1", "mlp_0", "embed", "z_1", "attn_1", "resid_0", "attn_0", "resid_10"]) == \
        ["embed", "attn_0", "mlp_0", "resid_0", "z_1", "attn_1", "resid_1", "resid_10"]


def test_specs_round_trip_and_errors_name_the_part():
    for text in ("organism", "/some/folder", "saelens:a/b", "gemma-scope-res:x@l0=50,width=16k+saelens:rel@sel",
                 "dictionary_learning:/d+gemma-scope-att:/g"):
        assert format_spec(parse_spec(text)) == text
    assert parse_spec("gemma-scope-mlp:x@l0=5,layer_3") == [SpecPart("gemma-scope-mlp", "x", {"l0": "5"}, "layer_3")]
    with pytest.raises(ValueError, match="'saelens:a@l0=5'.*options of saelens: none"):
        parse_spec("saelens:a@l0=5")
    with pytest.raises(ValueError, match="part 'foo:x' does not start with a format"):
        parse_spec("saelens:a+foo:x")
    with pytest.raises(ValueError, match="l0 must be a number"):
        parse_spec("gemma-scope-res:x@l0=many")
