"""Feature-level agreement with activation patching (compare --level feature) and verify_circuit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import featurecircuits as fc
from featurecircuits.fidelity import compare_features, verify_circuit
from featurecircuits.fidelity.features import plan_nodes
from featurecircuits.patching import both_runs
from featurecircuits.plots.compare import feature_comparison_figure
from featurecircuits.splice import Splice, run
from tests.conftest import linear_gpt_neox, random_batch, random_dictionaries, tiny_model


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_ap_atp_relp_and_ig_agree_on_every_feature_and_error_node_of_a_linear_model(float64):
    model = linear_gpt_neox()
    dicts = random_dictionaries(model, size=16)
    batches = [random_batch(n=3, t=4, seed=1), random_batch(n=2, t=5, seed=2)]
    comp = compare_features(model, dicts, batches, methods=["atp", "relp", "ig"])
    assert comp.kinds == ["embed", "attn", "mlp", "resid", "error"] and comp.n_pairs == 5
    for kind in comp.kinds:
        ap = comp.pairs["ap"][kind]
        assert ap.dtype == torch.float64 and len(ap) > 10 and ap.abs().max() > 0, kind
        for m in ("atp", "relp", "ig"):
            for pooled in (comp.pairs, comp.cells):
                assert torch.allclose(pooled[m][kind], pooled["ap"][kind], rtol=1e-7, atol=1e-9 * float(ap.abs().max()))
            assert comp.pcc[m][kind] == pytest.approx(1.0, abs=1e-9)
            assert comp.pcc_pairs[m][kind] == pytest.approx(1.0, abs=1e-9)
    # every pair × node entry is a node active (nonzero in either run) in that pair; cell means average over pairs
    assert comp.counts["resid"]["pair_nodes"] >= comp.counts["resid"]["nodes"]
    assert comp.patched_forwards > 0


def test_the_pooled_values_are_the_methods_scores_at_the_active_nodes():
    model = tiny_model()
    dicts = random_dictionaries(model, size=16)
    batch = random_batch(n=3, t=4, seed=3)
    comp = compare_features(model, dicts, [batch], methods=["relp"], submodules=["mlp_0", "resid_1"])
    relp = fc.attribute(model, batch, method="relp", dictionaries=dicts, submodules=["mlp_0", "resid_1"])
    ap = fc.attribute(model, batch, method="ap", dictionaries=dicts, submodules=["mlp_0", "resid_1"])
    splice = Splice(model, dicts, ["mlp_0", "resid_1"])
    runs = both_runs(model, splice, batch, fc.logit_diff, fc.AttributionConfig(method="ap"))
    base, src = runs.base_parts["mlp_0"]["act"], runs.source_parts["mlp_0"]["act"]
    active = (base != 0) | (src != 0)
    assert torch.allclose(comp.pairs["relp"]["mlp"], relp.scores["mlp_0"][active].double(), atol=1e-6)
    assert torch.allclose(comp.pairs["ap"]["mlp"], ap.scores["mlp_0"][active].double(), atol=1e-5)
    used = active.any(0)
    assert torch.allclose(comp.cells["ap"]["mlp"], ap.scores["mlp_0"].mean(0)[used].double(), atol=1e-5)
    assert comp.cell_nodes["mlp"] == [(4, f"mlp_0/f{f}@{t}") for t, f in used.nonzero().tolist()]
    errors = torch.stack([ap.error_scores["mlp_0"], ap.error_scores["resid_1"]], 1).flatten().double()
    assert torch.allclose(comp.pairs["ap"]["error"], errors, atol=1e-5)  # error terms are nonzero everywhere
    data = json.loads(json.dumps(comp.to_dict()))
    assert data["level"] == "feature" and set(data["pcc_by_pooling"]) == {"cell_means", "pairs_x_cells"}
    assert data["pcc"]["relp"]["mlp"] == pytest.approx(fc.pearson(comp.cells["ap"]["mlp"], comp.cells["relp"]["mlp"]))
    assert data["pcc_by_layer"]["relp"]["mlp"]["0"] == data["pcc"]["relp"]["mlp"]  # mlp_0 is the only MLP
    assert data["kinds"] == ["mlp", "resid", "error"] and data["counts"]["mlp"]["nodes"] == int(used.sum())
    normalized = compare_features(model, dicts, [batch], methods=["relp"], submodules=["mlp_0", "resid_1"],
                                  normalized=True)  # (LD − LD_patch)/(LD_clean − LD_patch): per-pair scale
    scale = (relp.metric_base - relp.metric_source).double()[:, None].expand(-1, 4 * 16)[active.flatten(1)]
    assert torch.allclose(normalized.pairs["relp"]["mlp"] * scale, comp.pairs["relp"]["mlp"], rtol=1e-6)
    html = feature_comparison_figure(comp).to_html(include_plotlyjs=False)
    assert "mlp: relp" in html and "error: relp" in html and "y = x" in html


def test_a_sample_covering_every_node_is_the_exhaustive_comparison():
    model = tiny_model()
    dicts = random_dictionaries(model, size=16)
    batches = [random_batch(n=2, t=4, seed=4), random_batch(n=2, t=4, seed=5)]
    subs = ["attn_0", "resid_1"]
    full = compare_features(model, dicts, batches, methods=["atp"], submodules=subs)
    covering = compare_features(model, dicts, batches, methods=["atp"], submodules=subs, sample=16, seed=7)
    for pooled in ("cells", "pairs"):
        for kind in full.kinds:
            assert torch.equal(getattr(full, pooled)["atp"][kind], getattr(covering, pooled)["atp"][kind])
            assert torch.equal(getattr(full, pooled)["ap"][kind], getattr(covering, pooled)["ap"][kind])
    assert covering.pcc == full.pcc and covering.patched_forwards == full.patched_forwards
    # a real sample: at most K features per submodule and position, drawn from the exhaustive set, by the seed
    splice = Splice(model, dicts, subs, sparse=True)
    cfg = fc.AttributionConfig(method="ap")
    every = plan_nodes(model, splice, batches, cfg)[4]
    drawn = plan_nodes(model, splice, batches, cfg, sample=2, seed=1)[4]
    features = drawn[drawn[:, 2] >= 0]
    assert torch.unique(features[:, :2], dim=0, return_counts=True)[1].max() <= 2
    assert {tuple(r) for r in drawn.tolist()} <= {tuple(r) for r in every.tolist()}
    assert torch.equal(drawn[drawn[:, 2] < 0], every[every[:, 2] < 0])  # every error node
    assert torch.equal(drawn, plan_nodes(model, splice, batches, cfg, sample=2, seed=1)[4])
    assert not torch.equal(drawn, plan_nodes(model, splice, batches, cfg, sample=2, seed=2)[4])
    sampled = compare_features(model, dicts, batches, methods=["atp"], submodules=subs, sample=2, seed=1)
    assert sampled.counts["resid"]["nodes"] < full.counts["resid"]["nodes"]
    assert sampled.to_dict()["sample"] == {"k": 2, "seed": 1}
    with pytest.raises(ValueError, match="sample must be a positive integer"):
        compare_features(model, dicts, batches, sample=0)
    with pytest.raises(ValueError, match="needs dictionaries"):
        compare_features(model, {}, batches)


# -- verify_circuit ------------------------------------------------------------------------------------------


def _patch_node(model, dicts, batch, ref) -> torch.Tensor:
    """Brute force: m(clean with the node set to its patch value at its position, or at every position at once
    when it has none) − m(clean), per example."""
    sub = model.submodule(ref.submodule)
    ae = dicts[ref.submodule]
    src = {}

    def parts(x):
        f = ae.encode(x)
        return f, x - ae.decode(f)

    with torch.no_grad():
        run(model, batch.patch, lambda s, x: src.__setitem__("p", parts(x)), [sub])

        def edit(s, x):
            f, err = parts(x)
            f2, err2 = f.clone(), err.clone()
            at = slice(None) if ref.position is None else ref.position
            if ref.part == "err":
                err2[:, at] = src["p"][1][:, at]
            else:
                f2[:, at, ref.feature] = src["p"][0][:, at, ref.feature]
            return x + (ae.decode(f2) + err2) - (ae.decode(f) + err)

        patched = fc.logit_diff(run(model, batch.clean, edit, [sub]), batch)
        base = fc.logit_diff(model.hf(input_ids=batch.clean).logits, batch)
    return patched - base


@pytest.mark.parametrize("aggregation", ["sum", "none"])
def test_verify_circuit_against_brute_force_patching(aggregation):
    model = tiny_model()
    dicts = random_dictionaries(model, size=16)
    batches = [random_batch(n=3, t=5, seed=6), random_batch(n=2, t=5, seed=7)]
    circuit = fc.discover(model, dicts, batches, top_k=8, edges=False, aggregation=aggregation, progress=False)
    got = verify_circuit(model, dicts, circuit, batches, k=3, seed=0, progress=False, per_position=True)
    assert json.loads(json.dumps(got)) == got
    assert {"pearson", "spearman", "sign_agreement", "top_k_overlap", "n", "k", "seed", "seconds",
            "patched_forwards", "nodes"} <= set(got)
    assert got["n"] == 9 and got["k"] == 3 and [n["group"] for n in got["nodes"]] == ["top"] * 3 + ["inside"] * 3 + [
        "outside"] * 3
    top = sorted(circuit.nodes, key=lambda n: -abs(circuit.score(n)))[:3]
    assert [n["id"] for n in got["nodes"][:3]] == top
    ids = {n["id"] for n in got["nodes"]}
    assert len(ids) == 9 and sum(i in circuit.nodes for i in ids) == 6
    for node in got["nodes"]:
        ref = fc.nodes.NodeRef.parse(node["id"])
        assert (ref.position is None) == (aggregation == "sum")
        brute = torch.cat([_patch_node(model, dicts, b, ref) for b in batches]).mean()
        assert node["ap"] == pytest.approx(float(brute), abs=1e-5), node["id"]
        if node["group"] != "outside":  # scores recomputed on the same pairs are the circuit's own
            assert node["score"] == pytest.approx(node["circuit_score"], rel=1e-5, abs=1e-7)
        else:
            assert node["circuit_score"] is None and node["score"] != 0
    scores, aps = np.array([n["score"] for n in got["nodes"]]), np.array([n["ap"] for n in got["nodes"]])
    assert got["pearson"] == pytest.approx(np.corrcoef(scores, aps)[0, 1], abs=1e-9)
    assert got["sign_agreement"] == pytest.approx(np.mean(np.sign(scores) == np.sign(aps)))
    by_score, by_ap = set(np.argsort(-np.abs(scores))[:3]), set(np.argsort(-np.abs(aps))[:3])
    assert got["top_k_overlap"] == pytest.approx(len(by_score & by_ap) / 3)
    assert got["patched_forwards"] <= 9 * 5 * (1 + 5)  # joint and per-position patches, examples that move
    again = verify_circuit(model, dicts, circuit, batches, k=3, seed=0, progress=False)["nodes"][3:]
    # seeded draws; AP to float rounding (its forwards are batched differently without the per-position patches)
    assert [{k: v for k, v in n.items() if k != "ap"} for n in again] == [
        {k: v for k, v in n.items() if k not in ("ap", "ap_position_sum")} for n in got["nodes"][3:]]
    assert [n["ap"] for n in again] == pytest.approx([n["ap"] for n in got["nodes"][3:]], rel=1e-5, abs=1e-7)


def test_verify_circuit_on_a_linear_model_is_exact_for_atp(float64):
    """On a linear model every node's AtP score is its AP, patched at all positions at once."""
    model = linear_gpt_neox()
    dicts = random_dictionaries(model, size=16)
    batches = [random_batch(n=3, t=5, seed=8)]
    circuit = fc.discover(model, dicts, batches, method="atp", top_k=6, edges=False, progress=False)
    got = verify_circuit(model, dicts, circuit, batches, k=2, progress=False)
    assert got["pearson"] == pytest.approx(1.0, abs=1e-9) and got["sign_agreement"] == 1.0
    for node in got["nodes"]:
        assert node["ap"] == pytest.approx(node["score"], rel=1e-6, abs=1e-12)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        verify_circuit(model, dicts, circuit, batches, k=0)


# -- the command line --------------------------------------------------------------------------------------


@pytest.mark.organism
def test_compare_at_feature_level_end_to_end_on_the_organism(tmp_path, capsys):
    from featurecircuits.cli import main

    args = ["compare", "--level", "feature", "--task", "ioi", "--n", "2", "--sample", "2", "--methods", "atp,relp"]
    assert main([*args, "--out", str(tmp_path / "f")]) == 0
    data = json.loads((tmp_path / "f" / "comparison.json").read_text())
    assert data["level"] == "feature" and data["n_pairs"] == 2 and data["dictionaries"] == "organism"
    assert data["kinds"] == ["embed", "attn", "mlp", "resid", "error"]
    for pooling in ("cell_means", "pairs_x_cells"):
        for kind in data["kinds"]:
            assert -1 <= data["pcc_by_pooling"][pooling]["relp"][kind] <= 1
    assert data["sample"] == {"k": 2, "seed": 0} and data["counts"]["error"]["nodes"] > 0
    assert (tmp_path / "f" / "comparison.html").stat().st_size > 1_000_000
    out = capsys.readouterr().out
    assert "PCC relp" in out and "error" in out and "patched sequences" in out
    assert main(["compare", "--level", "feature", "--dictionaries", "none", "--out", str(tmp_path / "x")]) == 2
    assert "--level feature needs dictionaries" in capsys.readouterr().err
    assert main(["compare", "--sample", "3", "--out", str(tmp_path / "x")]) == 2
    assert "apply to --level feature" in capsys.readouterr().err


@pytest.mark.organism
def test_compare_at_feature_level_resumes_to_the_uninterrupted_result(monkeypatch, tmp_path, capsys):
    import featurecircuits.fidelity.comparison as comparison
    from featurecircuits.cli import main

    args = ["compare", "--level", "feature", "--task", "sva-rc", "--n", "3", "--batch-size", "1", "--sample", "2",
            "--methods", "atp,relp"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    real, calls = comparison.batch_values, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(comparison, "batch_values", interrupted)
    assert main([*args, "--out", str(tmp_path / "c")]) == 130
    run_dir = tmp_path / "c.run"
    assert sorted(p.name for p in run_dir.iterdir()) == ["features-batch-0.pt", "features-batch-1.pt", "run.json"]
    calls.clear()
    assert main([*args, "--out", str(tmp_path / "c"), "--resume"]) == 0
    assert len(calls) == 1  # only the third batch was computed again
    ref, got = (json.loads((tmp_path / n / "comparison.json").read_text()) for n in ("ref", "c"))
    assert got == ref
    assert not run_dir.exists()
