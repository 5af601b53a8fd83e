"""The sparse feature path (AtP/RelP with features stored where active in either run) against the dense
reference path: the same scores and edges, in float64 to rounding, in float32 to 1e-5 of the largest."""

from __future__ import annotations

import pytest
import torch

import featurecircuits as fc
from featurecircuits import sparse
from featurecircuits.edges import score_edges
from featurecircuits.scoring import top_nodes
from featurecircuits.splice import Splice
from tests.conftest import random_batch, random_dictionaries, tiny_model

# torch warns once per process that sparse invariant checks are off; the filter is scoped to this module
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")


def _pair(family, method, dtype=torch.float32):
    model = tiny_model(family)
    dicts = random_dictionaries(model)
    if dtype == torch.float64:
        model.hf.double()
        dicts = {k: v.double() for k, v in dicts.items()}
    batch = random_batch(n=3)
    kw = dict(method=method, dictionaries=dicts)
    return model, dicts, batch, fc.attribute(model, batch, **kw), fc.attribute(model, batch, sparse=True, **kw)


def _largest(res):
    return max(max(float(sparse.dense(res.scores[s]).abs().max()), float(res.error_scores[s].abs().max()))
               for s in res.submodules)


@pytest.mark.parametrize("family", ["gpt_neox", "llama", "gemma2"])
@pytest.mark.parametrize("method", ["relp", "atp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_scores_equal_the_dense_path(family, method, dtype):
    model, dicts, batch, ref, fast = _pair(family, method, dtype)
    tol = (1e-12 if dtype == torch.float64 else 1e-5) * _largest(ref)
    for sub in ref.submodules:
        assert fast.scores[sub].is_sparse and not ref.scores[sub].is_sparse
        assert (sparse.dense(fast.scores[sub]) - ref.scores[sub]).abs().max() <= tol, sub
        assert (fast.error_scores[sub] - ref.error_scores[sub]).abs().max() <= tol, sub
        for part in ("act", "err"):  # Δ and coefficients too, where stored
            d = sparse.dense(fast.deltas[sub][part])
            assert torch.allclose(d, ref.deltas[sub][part], atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert torch.equal(fast.metric_base, ref.metric_base) or torch.allclose(fast.metric_base, ref.metric_base)


def test_only_features_active_in_either_run_are_stored():
    model, dicts, batch, ref, fast = _pair("gpt_neox", "relp")
    for sub in dicts:
        with torch.no_grad():
            active = (ref.activations[sub]["act"] != 0) | ((ref.activations[sub]["act"] + ref.deltas[sub]["act"]) != 0)
        for group in (fast.scores, fast.activations):
            t = group[sub] if group is fast.scores else group[sub]["act"]
            assert t._nnz() == int(active.sum()) < active.numel(), sub
        assert fast.coefficients[sub]["act"]._nnz() == int(active.sum())


def test_edges_from_the_sparse_path_equal_the_dense_path():
    model, dicts, batch, ref, fast = _pair("gpt_neox", "relp")
    nodes = top_nodes(ref, 60)
    assert top_nodes(fast, 60) == nodes or set(top_nodes(fast, 60)) == set(nodes)
    splice = Splice(model, dicts)
    a = score_edges(model, splice, batch, ref, nodes).weights
    b = score_edges(model, splice, batch, fast, nodes).weights
    assert a.keys() == b.keys() and len(a) > 50
    scale = max(abs(w) for w in a.values())
    assert max(abs(a[k] - b[k]) for k in a) <= 1e-5 * scale


def test_discover_uses_the_sparse_path_and_finds_the_dense_circuit():
    model = tiny_model()
    dicts = random_dictionaries(model)
    batch = random_batch(n=3)
    circuit = fc.discover(model, dicts, [batch], top_k=25, edge_threshold=0.0, aggregation="sum")
    ref = fc.attribute(model, batch, method="relp", dictionaries=dicts)
    assert set(circuit.nodes) == {fc.nodes.node_id(n) for n in top_nodes(ref, 25)}


@pytest.mark.parametrize("kind", ["relu", "jumprelu", "topk", "gated"])
@pytest.mark.parametrize("pos", [None, 2])
def test_errornode_cotangent_in_closed_form_equals_autograd(kind, pos):
    """Edges into an error node use c − Σ_active (c·dec_j) enc_j over the base run's active features (dense
    or sparse); autograd through encode and decode gives the same."""
    from featurecircuits.dictionaries.base import SAE, GatedSAE
    from featurecircuits.edges import error_cotangent, node_cotangent

    g = torch.Generator().manual_seed(4)
    d, w = 12, 40
    W_enc, W_dec = torch.randn(w, d, generator=g).double(), torch.randn(d, w, generator=g).double()
    b, b_dec = torch.randn(w, generator=g).double() * 0.5, torch.randn(d, generator=g).double()
    if kind == "gated":
        ae = GatedSAE(W_enc, b, b - 0.3, torch.randn(w, generator=g).double() * 0.1, W_dec, b_dec)
    else:
        extra = {"threshold": torch.rand(w, generator=g).double()} if kind == "jumprelu" else \
            {"k": 5} if kind == "topk" else {}
        ae = SAE(W_enc, b, W_dec, b_dec, activation=kind, b_pre=torch.randn(d, generator=g).double(), **extra)
    x = torch.randn(3, 5, d, generator=g).double()
    c = torch.randn(3, 5, d, generator=g).double()
    f = ae.encode(x)
    assert 0 < int((f > 0).sum()) < f.numel()

    class Only:  # the splice as node_cotangent reads it
        dictionaries = {"s": ae}

        @staticmethod
        def has_features(sub):
            return True

    sub = type("Sub", (), {"name": "s"})()
    ref = node_cotangent(Only, sub, ("s", "err", None, pos), {"err": c}, x)
    for features in (f, f.to_sparse()):
        got = error_cotangent(ae, ae.encoder_rows, c, features, pos, x)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
