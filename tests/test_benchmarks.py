"""The benchmark entry point runs and writes its table (timings are reported, never asserted)."""

from __future__ import annotations

import json

import pytest

from featurecircuits.models import ORGANISM_DIR


@pytest.mark.skipif(not (ORGANISM_DIR / "config.json").exists(), reason="organism not built")
def test_benchmark_table_on_the_organism(tmp_path, capsys):
    from benchmarks.__main__ import main

    out = tmp_path / "bench.json"
    assert main(["--settings", "organism", "--methods", "atp,relp", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    methods = [(r["level"], r["method"]) for r in rows]
    assert ("-", "plain fwd+fwd+bwd") in methods and ("feature", "relp") in methods
    assert ("feature", "edges, 100 nodes") in methods
    assert all(r["seconds"] > 0 and r["peak_rss_gib"] > 0 for r in rows)
    assert "peak_rss_gib" in capsys.readouterr().out
