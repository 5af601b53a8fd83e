"""`python -m benchmarks.page`: size and paint time of the circuit page at scale.

Builds circuits of N nodes and E edges shaped like the toolkit's own (features and error nodes on the 19
submodules of a 6-layer model, edges only from lower to higher rows, positions kept over 16 tokens or summed),
writes each as the one-page HTML the CLI writes, and opens it in headless Chromium where one is installed.
The page itself records when plotly finished drawing (``data-paint-ms`` on ``<body>``, milliseconds since
navigation start; ``data-plot-ms`` per figure, the time inside ``Plotly.newPlot``), and Chromium's
``--dump-dom`` prints the page after its load event, so both are read back without a driver. The table also
gives the whole Chromium run (start-up included) and the same for a blank page, the start-up cost alone.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import networkx as nx

from featurecircuits.circuit import METRIC_NODE, Circuit
from featurecircuits.plots import Section, circuit_figure, page_html
from featurecircuits.report import table

SUBMODULES = ["embed"] + [f"{k}_{l}" for l in range(6) for k in ("attn", "mlp", "resid")]
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def synthetic_circuit(n_nodes: int, n_edges: int, *, positions: int | None = 16, seed: int = 0) -> Circuit:
    """A circuit with ``n_nodes`` nodes (about 1 in 10 an error node) and ``n_edges`` edges between rows."""
    rng = random.Random(seed)
    g = nx.DiGraph()
    g.add_node(METRIC_NODE, kind="metric", score=3.0, submodule=None, layer=None, position=None, feature=None)
    ids: list[tuple[int, str]] = []
    while len(ids) < n_nodes:
        row = rng.randrange(len(SUBMODULES))
        sub = SUBMODULES[row]
        pos = rng.randrange(positions) if positions else None
        err = rng.random() < 0.1
        feat = None if err else rng.randrange(32768)
        name = f"{sub}/err" if err else f"{sub}/f{feat}"
        nid = name if pos is None else f"{name}@{pos}"
        if nid in g:
            continue
        g.add_node(nid, score=rng.gauss(0, 1) * rng.random() ** 3, kind="error" if err else "feature",
                   submodule=sub, layer=int(sub.split("_")[1]) if "_" in sub else -1, position=pos, feature=feat,
                   mean_activation=None if err else rng.random(), top_contexts=None)
        ids.append((row, nid))
    ids.sort()
    while g.number_of_edges() < n_edges + sum(1 for r, _ in ids if r == len(SUBMODULES) - 1):
        (ru, u), (rd, d) = rng.sample(ids, 2)
        if ru < rd and not g.has_edge(u, d):
            g.add_edge(u, d, weight=rng.gauss(0, 1) * rng.random() ** 3)
        if rd == len(SUBMODULES) - 1 and not g.has_edge(d, METRIC_NODE):
            g.add_edge(d, METRIC_NODE, weight=g.nodes[d]["score"])
    meta = {"model": "synthetic", "task": "synthetic", "method": "relp", "node_threshold": 0.1,
            "edge_threshold": 0.01, "aggregation": "none" if positions else "sum", "submodules": SUBMODULES}
    return Circuit(g, meta)


def chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM) if p), None)


def paint(browser: str, page: Path, timeout: float = 120.0) -> dict:
    """Open ``page`` in headless Chromium; the page's own timings and the whole run's wall time."""
    start = time.perf_counter()
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=60000",
                          "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    body = re.search(r"<body[^>]*data-paint-ms=\"(\d+)\"", out.stdout)
    plots = [int(v) for v in re.findall(r"data-plot-ms=\"(\d+)\"", out.stdout)]
    return {"paint_ms": int(body.group(1)) if body else None, "plot_ms": max(plots) if plots else None,
            "chromium_s": wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.page", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="229x1887,1000x10000", help="NODESxEDGES, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="Chromium runs per page (median reported)")
    parser.add_argument("--out", default="benchmarks/page_results.json")
    args = parser.parse_args(argv)
    browser = chromium()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        blank = Path(tmp) / "blank.html"
        blank.write_text("<html><body data-paint-ms='0'></body></html>")
        startup = sorted(paint(browser, blank)["chromium_s"] for _ in range(args.repeats))[args.repeats // 2] \
            if browser else None
        for size in args.sizes.split(","):
            n, e = (int(v) for v in size.split("x"))
            for positions in (16, None):
                circuit = synthetic_circuit(n, e, positions=positions)
                page = Path(tmp) / f"page-{n}-{e}-{positions}.html"
                start = time.perf_counter()
                page.write_text(page_html([Section("circuit", circuit_figure(circuit))], title="benchmark"))
                written = time.perf_counter() - start
                row = {"nodes": n, "edges": circuit.n_edges, "positions": positions or "summed",
                       "MB": round(page.stat().st_size / 1e6, 2), "write_s": round(written, 2)}
                if browser:
                    runs = sorted((paint(browser, page) for _ in range(args.repeats)), key=lambda r: r["chromium_s"])
                    mid = runs[args.repeats // 2]
                    row.update(paint_s=None if mid["paint_ms"] is None else mid["paint_ms"] / 1000,
                               plot_s=None if mid["plot_ms"] is None else mid["plot_ms"] / 1000,
                               chromium_s=round(mid["chromium_s"], 2), blank_chromium_s=round(startup, 2))
                rows.append(row)
    print(table(rows, list(rows[-1])))
    if not browser:
        print("no Chromium found (apt-get install -y chromium): page sizes only")
    Path(args.out).write_text(json.dumps({"rows": rows, "browser": browser}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
