"""Our attribution-graph export read by circuit-tracer's own code: its pydantic graph models (the format its
viewer and Neuronpedia take) accept the files, and its local server serves them to the viewer.

circuit-tracer pins an older transformers, so it is never installed beside us. CI installs the package alone
(``pip install --no-deps --target DIR circuit-tracer``: the frontend needs only pydantic and the standard
library) and names DIR in ``FEATURECIRCUITS_CIRCUIT_TRACER``; without it these tests skip."""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request

import pytest

from featurecircuits.cli import main

TARGET = os.environ.get("FEATURECIRCUITS_CIRCUIT_TRACER")
pytestmark = [
    pytest.mark.skipif(not TARGET, reason="set FEATURECIRCUITS_CIRCUIT_TRACER to a --target install of circuit-tracer"),
    pytest.mark.organism,
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ct")
    sys.path.insert(0, TARGET)
    circuit = tmp / "c.json"
    assert main(["discover", "--task", "sva-rc", "--n-examples", "8", "--top-k", "30", "--out", str(circuit)]) == 0
    out = tmp / "graphs"
    for example in (0, 3):
        assert main(["export", "--circuit", str(circuit), "--example", str(example), "--out", str(out)]) == 0
    yield out
    sys.path.remove(TARGET)


def test_circuit_tracers_graph_models_accept_the_export(exported):
    from circuit_tracer.frontend.graph_models import Metadata, Model

    graphs = sorted(p for p in exported.glob("*.json") if p.name != "graph-metadata.json")
    assert len(graphs) == 2
    for path in graphs:
        data = json.loads(path.read_text())
        parsed = Model.model_validate(data)
        assert len(parsed.nodes) == len(data["nodes"]) and len(parsed.links) == len(data["links"])
        assert {n.node_id for n in parsed.nodes} >= {link["source"] for link in parsed.links}
        assert parsed.metadata.slug == path.stem
    index = json.loads((exported / "graph-metadata.json").read_text())
    assert sorted(g["slug"] for g in index["graphs"]) == [p.stem for p in graphs]
    for entry in index["graphs"]:
        Metadata.model_validate(entry)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_circuit_tracers_local_server_serves_the_export(exported):
    from circuit_tracer.frontend.local_server import serve

    port = _free_port()
    server = serve(data_dir=str(exported), port=port)
    try:
        def get(path: str) -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                assert r.status == 200
                return r.read()

        index = json.loads(get("/data/graph-metadata.json"))
        assert index == json.loads((exported / "graph-metadata.json").read_text())
        for entry in index["graphs"]:
            served = json.loads(get(f"/graph_data/{entry['slug']}.json"))
            assert served == json.loads((exported / f"{entry['slug']}.json").read_text())
        assert get("/index.html").lower().startswith(b"<!doctype html>")  # the viewer (libraries from CDNs)
    finally:
        server.stop()
