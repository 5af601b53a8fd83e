"""The redesign reproduces the outputs recorded before it (tests/data/golden.json, see tests/golden.py):
node sets and edge sets exactly, scores, weights and faithfulness to 1e-6 (relative to the value's size)."""

from __future__ import annotations

import json

import pytest

import featurecircuits as fc
from tests.golden import PATH, record

pytestmark = pytest.mark.organism


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


@pytest.fixture(scope="module")
def outputs(organism):
    return json.loads(json.dumps(record(*organism))), json.loads(PATH.read_text())


def test_circuits_match_the_golden_outputs(outputs):
    new, old = outputs
    assert new["circuits"].keys() == old["circuits"].keys()
    for name, want in old["circuits"].items():
        got = new["circuits"][name]
        assert got["nodes"].keys() == want["nodes"].keys(), name
        bad = [n for n, s in want["nodes"].items() if not _close(got["nodes"][n], s)]
        assert not bad, (name, bad[:5])
        assert [e[:2] for e in got["edges"]] == [e[:2] for e in want["edges"]], name
        bad = [e for e, f in zip(got["edges"], want["edges"], strict=True) if not _close(e[2], f[2])]
        assert not bad, (name, bad[:5])


def test_evaluation_and_curve_match_the_golden_outputs(outputs):
    new, old = outputs
    for name, want in old["evaluate"].items():
        got = new["evaluate"][name]
        assert got["n_nodes"] == want["n_nodes"], name
        assert all(_close(got[k], v) for k, v in want.items()), (name, got, want)
    assert len(new["curve"]) == len(old["curve"])
    for got, want in zip(new["curve"], old["curve"], strict=True):
        assert got[0] == want[0] and got[2] == want[2], (got, want)
        assert all(_close(g, w) for g, w in zip(got[1:], want[1:], strict=True)), (got, want)


def test_compare_matches_the_golden_outputs(outputs):
    new, old = outputs
    for method, kinds in old["compare"]["pcc"].items():
        for kind, value in kinds.items():
            assert _close(new["compare"]["pcc"][method][kind], value), (method, kind)
    for method, kinds in old["compare"]["grids"].items():
        for kind, grid in kinds.items():
            flat_new = [v for row in new["compare"]["grids"][method][kind] for v in row]
            flat_old = [v for row in grid for v in row]
            if method == "ap":  # copies now start at their patch's layer: float32 rounding of the metric, whose
                scale = max(1.0, *map(abs, flat_old))  # differences AP cells are, relative to the largest cell
                assert all(abs(a - b) <= 1e-6 * scale for a, b in zip(flat_new, flat_old, strict=True)), kind
            else:
                assert all(_close(a, b) for a, b in zip(flat_new, flat_old, strict=True)), (method, kind)


def test_ap_through_every_layer_reproduces_the_golden_grid(organism):
    """With copies run through every layer (``reuse_layers=False``, AP as recorded) the grid is the golden one."""
    from featurecircuits.compare import compare
    from tests.golden import _task

    model, _ = organism
    comp = compare(model, _task("ioi").batches(model.tokenizer, 8, n=8), methods=(),
                   attribution=fc.AttributionConfig(reuse_layers=False))
    want = json.loads(PATH.read_text())["compare"]["grids"]["ap"]
    for kind, grid in next(iter(comp.grids.values()))["ap"].items():
        flat_new, flat_old = grid.flatten().tolist(), [v for row in want[kind] for v in row]
        assert all(_close(a, b) for a, b in zip(flat_new, flat_old, strict=True)), kind
