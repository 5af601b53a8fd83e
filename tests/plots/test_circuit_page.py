"""HTML pictures (escaped, self-contained) and the CLI end to end on the organism."""

from __future__ import annotations

import json
import re

import pytest

from featurecircuits.circuit import Circuit, discover
from featurecircuits.cli import main
from featurecircuits.evaluation import faithfulness_curve
from featurecircuits.nodes import METRIC_NODE, parse_node_id
from featurecircuits.plots import circuit_figure, circuits_page, curve_figure, submodule_rows, write_html
from tests.conftest import random_batch, random_dictionaries, tiny_model

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


def test_rows_in_execution_order_labels_shapes_and_token_columns():
    model = tiny_model()
    dicts = random_dictionaries(model)
    c = discover(model, dicts, [random_batch()], top_k=40, edge_threshold=0.001, aggregation="none")
    assert any("/f" in n for n in c.nodes) and any("/err" in n for n in c.nodes)
    rows = submodule_rows(c)
    assert rows[:4] == ["embed", "attn_0", "mlp_0", "resid_0"] and rows[-1] == "resid_1"  # resid_l above attn/mlp
    fig = circuit_figure(c, tokens=["<i>", "b", "c", "d", "e", "f"], label_top=5)
    nodes = next(t for t in fig.data if t.name == "nodes")
    y_of = dict(zip(nodes.customdata, nodes.y, strict=True))
    for n in c.nodes:  # each node sits in its submodule's row band
        assert abs(y_of[n] - rows.index(parse_node_id(n)[0])) <= 0.31
    assert list(fig.layout.yaxis.ticktext[:4]) == ["embed", "attn_0", "mlp_0", "resid_0"]
    labels = {n: t for n, t in zip(nodes.customdata, nodes.text, strict=True) if t}
    assert set(labels) == set(c.top(5))
    for n, t in labels.items():
        assert t == ("ε" if "/err" in n else f"f{parse_node_id(n)[2]}")
    symbols = dict(zip(nodes.customdata, nodes.marker.symbol, strict=True))
    assert {symbols[n] for n in c.nodes if "/err" in n} == {"triangle-up"} and symbols[METRIC_NODE] == "diamond"
    assert {symbols[n] for n in c.nodes if "/f" in n} == {"circle"}
    ticks = list(fig.layout.xaxis.ticktext)
    assert len(ticks) == 6 and ticks[0].startswith("&lt;i&gt;") and ticks[1].startswith("b")
    # examples whose tokens differ at a position: "pos k" there
    ticks = list(circuit_figure(c, tokens=[list("abcdef"), list("abXdef")]).layout.xaxis.ticktext)
    assert ticks[2].startswith("pos 2") and ticks[3].startswith("d")
    assert any("resid" in str(t.name) or "feature" in str(t.name) for t in fig.data if t.showlegend is not False)


def test_one_page_many_figures_shared_scale_and_size(tmp_path):
    model = tiny_model()
    dicts = random_dictionaries(model)
    batch = random_batch()
    small = discover(model, dicts, [batch], top_k=5, edge_threshold=0.0)
    big = discover(model, dicts, [batch], top_k=40, edge_threshold=0.0)
    path = circuits_page({"small": small, "big": big}, tmp_path / "p.html", title="run <1>")
    text = path.read_text()
    assert_offline(text)  # one copy of plotly.js for both figures
    figures = json.loads(re.search(r"const FC_FIGURES = (\[.*?\]);\n", text, re.S).group(1).replace("<\\/", "</"))
    assert len(figures) == 2
    cmax = [f["data"][8]["marker"]["cmax"] for f in figures]  # the node trace follows the 8 edge traces
    assert cmax[0] == cmax[1] == max(abs(big.score(n)) for n in big.nodes)  # one colour scale for the run
    assert "run &lt;1&gt;" in text and "<title>run <1>" not in text
    for f, c in zip(figures, (small, big), strict=True):
        fc_meta = f["layout"]["meta"]["featurecircuits"]
        assert len(fc_meta["edges"]) == c.n_edges and len(fc_meta["ids"]) == len(c) + 1
        assert f"{len(c)} nodes, {c.n_edges} edges" in f["layout"]["title"]["text"]


def test_a_large_circuit_page_stays_small(tmp_path):
    """1,000 nodes and 10,000 edges: a page of at most 10 MB (plotly.js is 4.8 MB of it)."""
    import random

    import networkx as nx

    rng = random.Random(0)
    subs = ["embed"] + [f"{k}_{l}" for l in range(6) for k in ("attn", "mlp", "resid")]
    g = nx.DiGraph()
    g.add_node(METRIC_NODE, kind="metric", score=1.0)
    names = [f"{rng.choice(subs)}/f{i}" for i in range(1000)]
    for n in names:
        g.add_node(n, kind="feature", score=rng.gauss(0, 1), mean_activation=1.0, top_contexts=["a [b] (1.0)"])
    pairs = set()
    while len(pairs) < 10_000:
        pairs.add(tuple(rng.sample(names, 2)))
    g.add_weighted_edges_from((u, v, rng.gauss(0, 1)) for u, v in sorted(pairs))
    c = Circuit(g, {"model": "synthetic", "method": "relp", "submodules": subs})
    path = write_html(circuit_figure(c), tmp_path / "big.html")
    assert path.stat().st_size <= 10 * 2**20
    assert_offline(path.read_text())


def test_curve_figure_has_a_line_per_method():
    model = tiny_model()
    curve = faithfulness_curve(model, random_dictionaries(model), [random_batch()], methods=("relp", "atp"),
                               thresholds=[0.01, 1.0])
    names = [t.name for t in curve_figure(curve).data]
    assert "relp faithfulness" in names and "atp completeness" in names and "random (atp sizes)" in names


@pytest.mark.organism
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
