"""HTML pictures (escaped, self-contained) and the CLI end to end on the organism."""

from __future__ import annotations

import json
import re

import pytest

from featurecircuits.circuit import Circuit, discover
from featurecircuits.cli import main
from featurecircuits.evaluation import faithfulness_curve
from featurecircuits.nodes import METRIC_NODE, parse_node_id
from featurecircuits.plots import PlotTooLarge, circuit_figure, circuits_page, curve_figure, submodule_rows, write_html
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
    c.metadata["positions"] = [{"clean": t, "patch": None, "varies": False, "role": None} for t in "<bcdef"]
    c.metadata["positions"][0]["clean"] = "<i>"
    c.metadata["positions"][2].update(patch="X", role="S1")
    c.metadata["positions"][3]["varies"] = True
    fig = circuit_figure(c, label_top=5)
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
    assert len(ticks) == 6 and ticks[0] == "&#x27;&lt;i&gt;&#x27;<br>0" and ticks[1] == "&#x27;b&#x27;<br>1"
    assert ticks[2] == "<b>S1</b><br>&#x27;c&#x27; / &#x27;X&#x27;<br>2"  # role, clean / patch token, position
    assert ticks[3] == "e.g. &#x27;d&#x27;<br>3"  # the examples' tokens differ here
    lo, hi = fig.layout.xaxis.range  # every node inside the plot area
    assert all(lo < x < hi for x in nodes.x) and all(-0.7 < y < len(rows) + 0.7 for y in nodes.y)
    assert any("resid" in str(t.name) or "feature" in str(t.name) for t in fig.data if t.showlegend is not False)


def test_one_page_many_figures_shared_scale_and_size(tmp_path):
    model = tiny_model()
    dicts = random_dictionaries(model)
    batch = random_batch()
    small = discover(model, dicts, [batch], top_k=5, edge_threshold=0.0)
    big = discover(model, dicts, [batch], top_k=40, edge_threshold=0.0)
    def figures_of(path):
        text = path.read_text()
        found = re.search(r"const FC_FIGURES = (\[.*?\]);\n", text, re.S).group(1).replace("<\\/", "</")
        return text, [views[0] for views in json.loads(found)]

    def cmax(f):
        return f["data"][f["layout"]["meta"]["featurecircuits"]["node_trace"]]["marker"]["cmax"]

    text, figures = figures_of(circuits_page({"small": small, "big": big}, tmp_path / "p.html", title="run <1>"))
    assert_offline(text)  # one copy of plotly.js for both figures
    assert len(figures) == 2
    assert [cmax(f) for f in figures] == [max(abs(c.score(n)) for n in c.nodes) for c in (small, big)]  # per tab
    _, shared = figures_of(circuits_page({"small": small, "big": big}, tmp_path / "s.html", shared_scale=True))
    assert cmax(shared[0]) == cmax(shared[1]) == max(abs(big.score(n)) for n in big.nodes)  # one scale
    assert "run &lt;1&gt;" in text and "<title>run <1>" not in text
    for f, c in zip(figures, (small, big), strict=True):
        fc_meta = f["layout"]["meta"]["featurecircuits"]
        assert len(fc_meta["edges"]) == c.n_edges and len(fc_meta["ids"]) == len(c) + 1
        assert f"{len(c)} nodes, {c.n_edges} edges" in f["layout"]["title"]["text"]


def _random_circuit(n_nodes: int, n_edges: int, seed: int = 0) -> Circuit:
    import random

    import networkx as nx

    rng = random.Random(seed)
    subs = ["embed"] + [f"{k}_{l}" for l in range(6) for k in ("attn", "mlp", "resid")]
    g = nx.DiGraph()
    g.add_node(METRIC_NODE, kind="metric", score=1.0)
    names = [f"{rng.choice(subs)}/f{i}" for i in range(n_nodes)]
    for n in names:
        g.add_node(n, kind="feature", score=rng.gauss(0, 1), mean_activation=1.0, top_contexts=["a [b] (1.0)"])
    pairs = set()
    while len(pairs) < n_edges:
        pairs.add(tuple(rng.sample(names, 2)))
    g.add_weighted_edges_from((u, v, rng.gauss(0, 1)) for u, v in sorted(pairs))
    return Circuit(g, {"model": "synthetic", "method": "relp", "submodules": subs})


def test_a_large_circuit_page_stays_small(tmp_path):
    """1,000 nodes and 10,000 edges: a page of at most 10 MB (plotly.js is 4.8 MB of it)."""
    c = _random_circuit(1000, 10_000)
    path = write_html(circuit_figure(c), tmp_path / "big.html")
    assert path.stat().st_size <= 10 * 2**20
    assert_offline(path.read_text())


def test_a_circuit_beyond_the_plot_limits_is_refused_before_drawing(tmp_path):
    c = _random_circuit(60, 300)
    assert len(c) == 60 and c.n_edges == 300  # the metric node is not counted
    with pytest.raises(PlotTooLarge, match=r"has 60 nodes and 300 edges.*--top-k K.*--max-nodes N"):
        circuits_page({"c": c}, tmp_path / "c.html", max_nodes=59)
    with pytest.raises(PlotTooLarge, match="300 edges"):
        c.to_html(tmp_path / "c.html", max_edges=299)
    assert not (tmp_path / "c.html").exists()
    c.to_html(tmp_path / "c.html", max_nodes=60, max_edges=300)  # at the limits: drawn
    assert (tmp_path / "c.html").stat().st_size > 0


def test_plot_refuses_a_circuit_beyond_max_nodes_and_draws_its_top_k(tmp_path, capsys):
    path = tmp_path / "c.json"
    _random_circuit(60, 300).to_json(path)
    out = tmp_path / "c.html"
    assert main(["plot", "--circuit", str(path), "--out", str(out), "--max-nodes", "40"]) == 2
    err = capsys.readouterr().err
    assert "c.json has 60 nodes and 300 edges" in err and "--top-k" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["plot", "--circuit", str(path), "--out", str(out), "--max-nodes", "40", "--top-k", "40"]) == 0
    assert "40 nodes" in capsys.readouterr().out and out.stat().st_size > 0


def test_curve_figure_has_a_line_per_method():
    model = tiny_model()
    curve = faithfulness_curve(model, random_dictionaries(model), [random_batch()], methods=("relp", "atp"),
                               thresholds=[0.01, 1.0])
    fig = curve_figure(curve, marks=[("found", "relp", 7, {"faithfulness": 0.5, "completeness": 0.1})])
    names = [t.name for t in fig.data]
    assert f"relp (AUC {curve.auc('relp'):.3f})" in names and any(n.startswith("atp (AUC") for n in names)
    assert any("random circuits" in n for n in names) and "this page's found" in names
    texts = [a.text for a in fig.layout.annotations]
    assert any("lower is better" in t for t in texts) and any("higher is better" in t for t in texts)


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


def test_one_sign_convention_toward_the_clean_answer_whatever_the_direction():
    """Under noising a node that supports the clean answer scores < 0 (patching it away lowers the metric);
    the page shows sign × score: red (+) toward the clean answer in both directions."""
    model = tiny_model()
    dicts = random_dictionaries(model)
    batch = random_batch()
    noising = discover(model, dicts, [batch], top_k=12, edge_threshold=0.0, direction="noising")
    denoising = discover(model, dicts, [batch], top_k=12, edge_threshold=0.0, direction="denoising")
    assert noising.sign == -1 and denoising.sign == 1
    for c in (noising, denoising):
        fig = circuit_figure(c)
        meta = fig.layout.meta["featurecircuits"]
        colours = dict(zip(meta["ids"], fig.data[meta["node_trace"]].marker.color, strict=True))
        assert all(colours[n] == pytest.approx(max(-1e9, c.sign * c.score(n))) for n in c.nodes)
        weights = {(meta["ids"][u], meta["ids"][v]): w for u, v, w in meta["edges"]}
        assert all(weights[(u, v)] == pytest.approx(c.sign * w) for u, v, w in c.edges)
        hover = fig.data[meta["hover_trace"]].hovertext
        assert len(hover) == min(300, c.n_edges) and "edge toward the clean answer" in hover[0]


def test_the_summed_view_of_a_positional_circuit_is_the_summed_circuit():
    """Summing a positional circuit's node scores and edge weights over positions gives exactly what discover
    finds with aggregation='sum' (every node and edge kept)."""
    model = tiny_model()
    dicts = random_dictionaries(model, size=16)  # every node of every position gets its edges: keep it small
    batch = random_batch(n=2, t=4)
    kw = dict(node_threshold=0.0, edge_threshold=0.0)
    summed = discover(model, dicts, [batch], aggregation="none", **kw).summed()
    direct = discover(model, dicts, [batch], aggregation="sum", **kw)
    nonzero = [n for n in direct.nodes if direct.score(n) != 0]
    assert len(nonzero) > 40 and direct.n_edges > 1000  # (53 and 2,907 when written)
    assert set(nonzero) <= set(summed.nodes)
    for n in summed.nodes:
        assert summed.score(n) == pytest.approx(direct.score(n) if n in direct.graph else 0.0, abs=1e-6)
    for u, v, w in direct.edges:
        if u in summed.graph and v in summed.graph:
            assert summed.graph.edges[u, v]["weight"] == pytest.approx(w, abs=1e-6), (u, v)


def test_each_tab_states_its_context_and_offers_both_views(tmp_path):
    from featurecircuits.evaluation import Faithfulness

    c = discover(*(lambda m: (m, random_dictionaries(m)))(tiny_model()), [random_batch()], top_k=10,
                 aggregation="none", edge_threshold=0.0)
    c.metadata["example"] = {"clean_prefix": "The pilot", "patch_prefix": "The pilots", "clean_answer": " was",
                             "patch_answer": " were"}
    result = Faithfulness(0.91, 0.02, 1.0, 0.1, 0.0, 1.1, 10, 3, {"ablation": "mean"}, "evaluation", 24, 0.0)
    text = c.to_html(tmp_path / "c.html", evaluation=result).read_text()
    for phrase in ("logit(&#x27; was&#x27;) − logit(&#x27; were&#x27;)", "Faithfulness 0.910, completeness 0.020 "
                   "(lower is better)", "24 evaluation pairs, held out", "Error terms hold", "Sign: red (+) pushes",
                   "data-view='1'>summed over positions"):
        assert phrase in text, phrase


@pytest.mark.organism
def test_discover_verify_records_agreement_with_activation_patching_and_the_page_shows_it(tmp_path, capsys):
    out, page = tmp_path / "c.json", tmp_path / "c.html"
    assert main(["discover", "--task", "sva-rc", "--n-examples", "6", "--top-k", "12", "--verify", "4",
                 "--features", "none", "--out", str(out), "--html", str(page)]) == 0
    v = json.loads(out.read_text())["metadata"]["verification"]
    assert {"pearson", "spearman", "sign_agreement", "top_k_overlap", "n", "k", "patched_forwards"} <= set(v)
    assert v["k"] == 4 and v["n"] == len(v["nodes"]) and 8 <= v["n"] <= 12 and -1 <= v["pearson"] <= 1
    assert "verified against activation patching" in capsys.readouterr().out
    assert "Checked against activation patching on" in page.read_text()
    assert Circuit.from_json(out).metadata["verification"] == v  # survives the round trip


@pytest.mark.organism
def test_discover_writes_the_circuit_when_its_page_would_be_too_large(tmp_path, capsys, monkeypatch):
    from featurecircuits.cli import inputs
    from featurecircuits.plots import PlotTooLarge, check_size

    def page(circuit, **options):  # the limit of a much smaller page
        check_size(circuit, "the circuit", max_nodes=2)
        raise AssertionError("not refused")

    monkeypatch.setattr(inputs, "circuit_page", page)
    out, html = tmp_path / "c.json", tmp_path / "c.html"
    assert main(["discover", "--task", "sva-rc", "--n-examples", "4", "--top-k", "5", "--out", str(out),
                 "--html", str(html)]) == 0
    err = capsys.readouterr().err
    assert "warning: --html not written: the circuit has 5 nodes" in err
    assert f"featurecircuits plot --circuit {out} --top-k 500 --out {html}" in err
    assert len(Circuit.from_json(out)) == 5 and not html.exists()
    assert PlotTooLarge.__mro__[1].__name__ == "UsageError"


def test_a_dossier_label_is_not_quoted_twice():
    c = _random_circuit(3, 2)
    a, b = c.nodes[:2]
    c.graph.nodes[a]["label"], c.graph.nodes[b]["label"] = "‹pilots› → were", "pilot"
    fig = circuit_figure(c)
    text = " ".join(t.text if isinstance(t.text, str) else " ".join(map(str, t.text or ())) for t in fig.data)
    assert "‹pilots› → were" in text and "‹pilot›" in text and "‹‹" not in text
