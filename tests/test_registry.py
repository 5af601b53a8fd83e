"""The registries: names checked before any work, torch-free imports, and extension by one entry + one
module (a method added from a test module runs through attribute, discover with edges and curves)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import featurecircuits as fc
from featurecircuits import registry
from featurecircuits.config import AttributionConfig, LRPConfig
from tests.conftest import random_batch, random_dictionaries, tiny_model


def test_registry_config_and_cli_parser_import_without_torch():
    code = ("import sys, featurecircuits.registry, featurecircuits.config, featurecircuits.words, "
            "featurecircuits.nodes, featurecircuits.export, featurecircuits.dictionaries.spec, "
            "featurecircuits.dictionaries.formats; featurecircuits.dictionaries.spec.parse_spec('saelens:x+"
            "gemma-scope-res:y@l0=5'); from featurecircuits.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_names_fail_listing_the_valid_ones():
    with pytest.raises(ValueError, match="unknown method 'relpp'; valid: ap, atp, relp, ig"):
        AttributionConfig(method="relpp")
    with pytest.raises(ValueError, match="empty method name"):
        registry.parse_methods("relp,,atp")
    with pytest.raises(ValueError, match="unknown rule set 'defualt'"):
        LRPConfig.parse("defualt")
    with pytest.raises(ValueError, match="unknown attention rule 'AH'"):
        LRPConfig.parse("attention=AH")


def test_rules_spelling_round_trips_and_resolves_per_family():
    for spec in ("default", "gradient", "paper", "attention=ah", "gradient,gate=half", "linear=epsilon,epsilon=0.001"):
        cfg = LRPConfig.parse(spec)
        assert LRPConfig.parse(cfg.spec) == cfg
    assert LRPConfig.parse("gradient").resolve("llama").is_gradient
    resolved = LRPConfig(attention="ah").resolve("gpt_neox")
    assert resolved.is_resolved and resolved.attention == "ah" and resolved.norm == "ln"


def test_the_config_flows_into_every_output():
    model = tiny_model()
    dicts = random_dictionaries(model)
    batch = random_batch()
    cfg = AttributionConfig(method="relp", lrp=LRPConfig(attention="ah"), direction="denoising")
    circuit = fc.discover(model, dicts, [batch], config=cfg, top_k=10)
    recorded = circuit.metadata["config"]
    assert LRPConfig.parse(recorded["rules"]) == LRPConfig(attention="ah").resolve("gpt_neox")
    assert "attention=ah" in recorded["rules"] and "norm=ln" in recorded["rules"]
    assert recorded["direction"] == "denoising" and AttributionConfig.from_dict(recorded).lrp.attention == "ah"
    assert circuit.metadata["dictionary_sources"]["resid_1"]["hash"] == dicts["resid_1"].source.hash
    # the curve scores RelP with the given rules: gradient rules make it AtP exactly
    curve = fc.faithfulness_curve(model, dicts, [batch], methods=("relp", "atp"), thresholds=[0.1, 0.5],
                                  lrp=LRPConfig.gradient(), random_baseline=False)
    relp, atp = curve.series("relp"), curve.series("atp")
    assert [(p.n_nodes, p.faithfulness) for p in relp] == [(p.n_nodes, p.faithfulness) for p in atp]


def test_evaluating_with_other_dictionaries_is_an_error():
    model = tiny_model()
    dicts = random_dictionaries(model)
    batch = random_batch()
    circuit = fc.discover(model, dicts, [batch], top_k=10, edges=False)
    other = random_dictionaries(model, seed=1)
    with pytest.raises(ValueError, match="the dictionary given for embed .* is not the one this circuit was found"):
        fc.evaluate(model, other, circuit, [batch])


def test_a_method_added_by_one_registry_entry_and_one_module(monkeypatch):
    info = registry.MethodInfo("gxi", "gradient × input", "tests.extension.grad_times_input:grad_times_input",
                               needs_backward=True, coefficient="gradient", uses_rules=False, edges=True,
                               cost="1 forward + 1 backward")
    monkeypatch.setitem(registry.METHODS, "gxi", info)
    model = tiny_model()
    dicts = random_dictionaries(model)
    batch = random_batch()
    res = fc.attribute(model, batch, method="gxi", dictionaries=dicts)
    acts = res.activations["resid_0"]["act"]
    assert torch.allclose(res.scores["resid_0"], -acts * res.coefficients["resid_0"]["act"])
    circuit = fc.discover(model, dicts, [batch], method="gxi", top_k=20, edge_threshold=0.0)
    assert len(circuit) == 20 and circuit.n_edges > 0 and circuit.metadata["method"] == "gxi"
    curve = fc.faithfulness_curve(model, dicts, [batch], methods=("gxi",), thresholds=[0.5], random_baseline=False)
    assert curve.methods() == ["gxi"]
