"""HTML pictures (escaped, self-contained) and the CLI end to end on the organism."""

from __future__ import annotations

import json
import re

import pytest
from conftest import random_batch, random_dictionaries, tiny_model

from featurecircuits.circuit import METRIC_NODE, Circuit, discover
from featurecircuits.cli import main
from featurecircuits.evaluation import faithfulness_curve
from featurecircuits.models import ORGANISM_DIR
from featurecircuits.plots import circuit_figure, circuits_page, curve_figure, submodule_rows, write_html

_SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script>", re.S | re.I)


def assert_offline(text: str) -> None:
    """No script is loaded from the network, and plotly.js itself is inlined, exactly once."""
    scripts = _SCRIPT.findall(text)
    for attrs, _ in scripts:
        src = re.search(r"\bsrc\s*=\s*[\"']?([^\"'\s>]+)", attrs, re.I)
        assert src is None or not re.match(r"(?i)(https?:)?//", src.group(1)), f"network script: {src.group(1)}"
    inline = [body for attrs, body in scripts if "src" not in attrs.lower()]
    plotly = [b for b in inline if len(b) > 1_000_000 and "plotly.js v" in b[:500] and "Plotly" in b]
    assert len(plotly) == 1, "plotly.js must be inlined exactly once"
    assert text.count("* plotly.js v") == 1


def test_assert_offline_rejects_a_cdn_page(tmp_path):
    fig = curve_figure.__globals__["go"].Figure()
    cdn = fig.to_html(include_plotlyjs="cdn", full_html=True)
    with pytest.raises(AssertionError):
        assert_offline(cdn)
    with pytest.raises(AssertionError):
        assert_offline(cdn.replace('src="https://', 'src="//'))


def _circuit():
    model = tiny_model()
    return discover(model, random_dictionaries(model), [random_batch()], node_threshold=0.01, edge_threshold=0.001)


def test_graph_has_one_marker_per_node_and_escapes_strings(tmp_path):
    c = _circuit()
    node = c.nodes[0]
    c.graph.nodes[node]["top_contexts"] = ["<script>alert(1)</script> [tok]"]
    fig = circuit_figure(c, title="<b>user title</b>")
    markers = [t for t in fig.data if t.name == "nodes"]
    assert len(markers) == 1 and len(markers[0].x) == len(c) + 1  # + the metric node
    assert set(markers[0].customdata) == set(c.nodes) | {METRIC_NODE}
    path = write_html(fig, tmp_path / "c.html")
    text = path.read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;" in text
    assert "&lt;b&gt;user title&lt;" in text and "<b>user title" not in text
    assert_offline(text)


def test_curve_figure_has_a_line_per_method():
    model = tiny_model()
    curve = faithfulness_curve(model, random_dictionaries(model), [random_batch()], methods=("relp", "atp"),
                               thresholds=[0.01, 1.0])
    names = [t.name for t in curve_figure(curve).data]
    assert "relp faithfulness" in names and "atp completeness" in names and "random (atp sizes)" in names


@pytest.mark.skipif(not (ORGANISM_DIR / "config.json").exists(), reason="organism not built")
def test_cli_discover_evaluate_plot_on_the_organism(tmp_path, capsys):
    circuit = tmp_path / "c.json"
    assert main(["discover", "--task", "sva-rc", "--n-examples", "8", "--node-threshold", "0.2",
                 "--out", str(circuit), "--html", str(tmp_path / "c.html")]) == 0
    data = json.loads(circuit.read_text())
    assert data["metadata"]["node_threshold"] == 0.2 and data["metadata"]["n_examples"] == 8
    c = Circuit.from_json(circuit)
    assert all(abs(c.score(n)) >= 0.2 for n in c.nodes)
    assert main(["evaluate", "--task", "sva-rc", "--n-examples", "8", "--circuit", str(circuit),
                 "--out", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["n_nodes"] == len(c) and result["config"]["ablation"] == "mean"
    assert main(["plot", "--circuit", str(circuit), "--top-k", "5", "--out", str(tmp_path / "p.html")]) == 0
    out = capsys.readouterr().out
    assert "faithfulness" in out and "5 nodes" in out
    assert main(["evaluate", "--task", "sva-rc", "--circuit", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
