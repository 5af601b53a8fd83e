"""The benchmark entry point runs and writes its table (timings are reported, never asserted), and the
calibrated random dictionaries of the Pythia-shaped setting fire a realistic number of features."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import random_batch, tiny_model


@pytest.mark.organism
def test_benchmark_table_on_the_organism(tmp_path, capsys):
    from benchmarks.__main__ import main

    out = tmp_path / "bench.json"
    # rows run in fresh processes (a few seconds each to start): the rows the assertions read
    assert main(["--settings", "organism", "--methods", "relp", "--levels", "feature", "--paths", "sparse",
                 "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    methods = [(r["level"], r["method"]) for r in rows]
    assert ("-", "plain fwd+fwd+bwd") in methods and ("feature", "relp") in methods
    assert ("-", "floor: plain + dense encodes") in methods
    assert ("feature", "edges, 100 nodes") in methods
    assert all(r["seconds"] > 0 and r["peak_rss_gib"] > 0 for r in rows)
    floor = next(r for r in rows if r["method"].startswith("floor"))
    for r in rows:
        if r["level"] == "feature" and r["method"] in ("atp", "relp"):
            assert r["ratio_floor"] == pytest.approx(r["seconds"] / floor["seconds"])
        if r["level"] == "component":
            assert r["ratio_floor"] is None
    l0 = result["settings"]["organism"]["mean_l0"]
    assert set(l0) == {"embed"} | {f"{k}_{l}" for k in ("attn", "mlp", "resid") for l in range(6)}
    assert all(v > 0 for v in l0.values())
    assert "ratio_floor" in capsys.readouterr().out


def test_calibration_hits_the_target_l0():
    from dictionary_learning import AutoEncoder

    from benchmarks import settings

    model = tiny_model("gpt_neox")
    width, target = 256, 8.0
    torch.manual_seed(0)
    dicts = {s.name: AutoEncoder(model.d_model, width).requires_grad_(False) for s in model.submodules}
    cal = random_batch(50, 16, seed=5)
    acts = settings.activations(model, cal.clean, model.submodules)
    for name, ae in dicts.items():
        settings.calibrate(ae, acts[name], target)
    # on the calibration tokens the count is k · width / rows features per token, up to ties (the tiny
    # vocabulary repeats tokens, so some activation rows repeat)
    k = round(target * 50 * 16 / width)
    for name, ae in dicts.items():
        l0 = float((ae.encode(acts[name]) > 0).sum(-1).float().mean())
        assert abs(l0 - k * width / (50 * 16)) < 0.25 * target, name
    # on other tokens it stays near the target at every submodule (none dead, none dense)
    l0 = settings.mean_l0(model, dicts, random_batch(20, 16, seed=9))
    assert all(0.4 * target < v < 2.5 * target for v in l0.values()), l0


def test_encoder_helpers_know_both_layouts():
    from benchmarks import settings

    class WEnc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W_enc = torch.nn.Parameter(torch.randn(4, 6))
            self.b_enc = torch.nn.Parameter(torch.randn(6))

    d = WEnc()
    x = torch.randn(3, 4)
    assert settings.encoder_bias(d) is d.b_enc
    torch.testing.assert_close(settings.preactivations(d, x), x @ d.W_enc + d.b_enc)
    d.W_enc = torch.nn.Parameter(torch.randn(6, 4))  # nn.Linear layout (width, d_in), with b_pre
    d.b_pre = torch.randn(4)
    torch.testing.assert_close(settings.preactivations(d, x), (x - d.b_pre) @ d.W_enc.T + d.b_enc)
    with pytest.raises(TypeError, match="neither encoder.bias nor b_enc"):
        settings.encoder_bias(torch.nn.Identity())


def test_page_benchmark_builds_the_requested_circuit_and_a_page_under_10_mb(tmp_path, monkeypatch):
    import benchmarks.page as page
    from benchmarks.page import main, synthetic_circuit

    c = synthetic_circuit(300, 3000)  # the benchmark's code path; the 1,000 × 10,000 page size: tests/plots
    assert len(c) == 300 and c.n_edges >= 3000
    rows = {n: i for i, n in enumerate(c.metadata["submodules"])}
    sub = lambda n: c.graph.nodes[n]["submodule"]  # noqa: E731
    assert all(rows[sub(u)] < rows[sub(d)] for u, d in c.graph.edges if d != "logit")
    out = tmp_path / "page.json"
    monkeypatch.setattr(page, "CHROMIUM", ())  # sizes only: timings are the benchmark's, not the test's
    assert main(["--sizes", "300x3000", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["positions"] for r in rows] == [16, "summed"]
    assert all(r["MB"] <= 10 for r in rows)


def test_growth_columns_divide_by_tokens_times_l0():
    from benchmarks.__main__ import scale_columns

    def row(method, tokens, seconds, excess):
        return {"setting": "s", "level": "feature", "method": method, "tokens": tokens, "seconds": seconds,
                "excess_gib": excess}

    rows = [row("relp", 16, 1.0, 0.5), row("relp", 64, 8.0, 2.0), row("plain", 16, 1.0, 0.0)]
    scale_columns(rows, {("s", 16): 10.0, ("s", 64): 5.0})  # L0 halves at 64 tokens
    # tokens × L0 doubles: time grows 8×, i.e. 4× faster than tokens × L0; memory 4×, i.e. 2× faster
    assert rows[1]["time_per_tl0"] == pytest.approx(4.0) and rows[1]["excess_per_tl0"] == pytest.approx(2.0)
    assert rows[0]["time_per_tl0"] == 1.0 and rows[2]["excess_per_tl0"] is None


@pytest.mark.organism
def test_compare_benchmark_times_both_paths_and_finds_them_equal(tmp_path, capsys):
    from benchmarks.compare import PATHS, main

    out = tmp_path / "compare.json"
    assert main(["--model", "organism", "--n", "4", "--batch-size", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["path"] for r in result["rows"]] == list(PATHS) and result["pairs"] == 4
    assert result["rows"][0]["speed-up"] == 1.0 and all(r["seconds"] > 0 for r in result["rows"])
    assert result["max_pcc_difference"] < 1e-5
    assert 0 < result["max_ap_cell"] and result["max_ap_cell_difference"] <= 1e-5 * result["max_ap_cell"]
    assert "speed-up" in capsys.readouterr().out
