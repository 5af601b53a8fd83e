"""An export format is one module plus one entry in the export table (tests/extension/edge_list.py)."""

from __future__ import annotations

import featurecircuits as fc
from featurecircuits import cli, export
from tests.conftest import random_batch, random_dictionaries, tiny_model


def test_an_export_format_added_by_one_module_and_one_entry(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(export.FORMATS, "edge-list", export.ExportFormat(
        "edge-list", "a tab-separated edge list", "tests.extension.edge_list:export"))
    model = tiny_model()
    circuit = fc.discover(model, random_dictionaries(model), [random_batch()], top_k=8, edge_threshold=0.0)
    path = export.export_circuit(circuit, tmp_path / "api", format="edge-list")
    rows = path.read_text().splitlines()
    assert rows[0] == "source\ttarget\tweight" and len(rows) == 1 + circuit.n_edges
    assert {tuple(r.split("\t")[:2]) for r in rows[1:]} == {(u, v) for u, v, _ in circuit.edges}
    # and from the command line, --format takes it
    circuit.to_json(tmp_path / "c.json")
    assert cli.main(["export", "--circuit", str(tmp_path / "c.json"), "--format", "edge-list",
                     "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "edges.tsv").read_text() == path.read_text()
    assert "edge-list" in capsys.readouterr().out
