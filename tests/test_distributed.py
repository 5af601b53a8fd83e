"""Data-parallel runs over torchrun's ranks (issue 25): two CPU ranks over gloo give the one-process
circuit, faithfulness and curve; the command line under torchrun writes the one-process circuit once; an
interrupted two-rank run resumes, rank by rank, to the same circuit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import featurecircuits as fc
from featurecircuits import distributed
from featurecircuits.errors import UsageError
from featurecircuits.evaluation import faithfulness_curve
from featurecircuits.tasks import Task, make_task
from tests.conftest import random_batch, random_dictionaries, tiny_model

REPO = Path(__file__).resolve().parents[1]
CLI = ["discover", "--task", "sva-rc", "--n-examples", "7", "--batch-size", "2", "--top-k", "15",
       "--edge-threshold", "0.02"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives a rank."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)


def _launch(worker, *args) -> None:
    # forked: the ranks start with what this process has imported (a fresh interpreter costs more than the work)
    mp.start_processes(worker, args=(2, _free_port(), *args), nprocs=2, join=True, start_method="fork")


# --------------------------------------------------------------------------------------------------
# The library: discover, evaluate and curve on a tiny model


def _tiny():
    model = tiny_model()
    # 7 pairs over two batches: rank 0 gets the first batch and one pair of the second (a batch split)
    return model, random_dictionaries(model), [random_batch(3, seed=1), random_batch(4, seed=2)]


def _run_library(model, dicts, batches) -> dict:
    circuit = fc.discover(model, dicts, batches, method="relp", top_k=20, edge_threshold=0.0, aggregation="none",
                          progress=False)
    result = fc.evaluate(model, dicts, circuit, batches)
    curve = faithfulness_curve(model, dicts, batches, methods=("atp",), thresholds=[0.01, 0.1], random_baseline=False,
                               progress=False)
    return {"circuit": circuit.to_dict(), "evaluate": result, "curve": curve.to_dict()}


def _over_budget() -> dict:
    """Hover contexts of an organism circuit whose attributions are not kept: those of the first batch, all 7
    pairs (rank 0 holds 4 of them)."""
    model = fc.load_model("organism")
    circuit = fc.discover(model, fc.load_dictionaries("organism", model), Task("sva", make_task("sva-rc", 7)),
                          top_k=8, edges=False, batch_size=7, split="all", memory_budget=0, progress=False)
    return {n: circuit.graph.nodes[n]["top_contexts"] for n in circuit.nodes}


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    """One rank: the library on the tiny model, then ``featurecircuits discover`` on the organism interrupted
    (Ctrl-C during each rank's second batch, once its first is saved) and resumed, all in one process group
    (a process's start costs more than the work)."""
    _join(rank, world, port)
    from featurecircuits import scoring
    from featurecircuits.cli import main

    got = _run_library(*_tiny())
    got["over_budget"] = _over_budget()
    if rank == 0:
        torch.save(got, Path(folder) / "library.pt")
    real, calls = scoring.attribute_splice, []

    def attribute(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    scoring.attribute_splice = attribute
    out = str(Path(folder) / "resumed.json")
    if main([*CLI, "--out", out]) != 130:
        raise SystemExit(f"rank {rank}: the interrupted run did not exit 130")
    scoring.attribute_splice = real
    distributed.barrier()  # both ranks interrupted before either looks or resumes
    run = Path(folder, "resumed.json.run")
    units = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    if main([*CLI, "--out", out, "--resume"]) != 0:
        raise SystemExit(f"rank {rank}: the resumed run failed")
    if rank == 0:
        (Path(folder) / "units.json").write_text(json.dumps(units))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(1.0, abs(a), abs(b))


def assert_same_circuit(got: dict, want: dict) -> None:
    """Same nodes, same edges, scores and weights within float32 summation tolerance."""
    g_nodes, w_nodes = ({n["id"]: n["score"] for n in c["nodes"]} for c in (got, want))
    assert g_nodes.keys() == w_nodes.keys()
    assert all(_close(g_nodes[n], s) for n, s in w_nodes.items())
    assert [n.get("top_contexts") for n in got["nodes"]] == [n.get("top_contexts") for n in want["nodes"]]
    g_edges, w_edges = ({(e["source"], e["target"]): e["weight"] for e in c["edges"]} for c in (got, want))
    assert g_edges.keys() == w_edges.keys()
    assert all(_close(g_edges[e], w) for e, w in w_edges.items())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One thread, as each rank runs (on a busy machine, far faster than two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, organism) -> dict:
    """The circuit the command line finds in one process."""
    from featurecircuits.cli import main

    out = tmp_path_factory.mktemp("one") / "one.json"
    assert main([*CLI, "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.organism
def test_two_ranks_give_the_one_process_results_and_resume_rank_by_rank(tmp_path, one_process):
    _launch(_worker, str(tmp_path))
    got = torch.load(tmp_path / "library.pt", weights_only=False)
    want = _run_library(*_tiny())
    assert len(want["circuit"]["nodes"]) > 10 and len(want["circuit"]["edges"]) > 10  # not a trivial circuit
    assert_same_circuit(got["circuit"], want["circuit"])
    meta = got["circuit"]["metadata"]
    assert (meta["world_size"], meta["ranks"], meta["n_examples"]) == (2, [4, 3], 7)
    assert "world_size" not in want["circuit"]["metadata"]  # one process: nothing changes
    g, w = got["evaluate"], want["evaluate"]
    assert (g.world_size, g.ranks, g.n_examples, g.n_nodes) == (2, [4, 3], 7, w.n_nodes)
    for key in ("faithfulness", "completeness", "m_circuit", "m_complement", "m_empty", "m_full"):
        assert _close(getattr(g, key), getattr(w, key)), key
    g, w = got["curve"], want["curve"]
    assert (g["world_size"], g["ranks"], g["discovery_ranks"]) == (2, [4, 3], [4, 3])
    assert [p["n_nodes"] for p in g["points"]] == [p["n_nodes"] for p in w["points"]]
    for gp, wp in zip(g["points"], w["points"], strict=True):
        assert all(_close(gp[k], wp[k]) for k in ("threshold", "faithfulness", "completeness"))
    want = _over_budget()
    assert got["over_budget"] == want and any(want.values())  # the first batch's contexts, found by rank 0

    # interrupted: each rank kept its first batch in its own run folder; resumed: the one-process circuit
    assert json.loads((tmp_path / "units.json").read_text()) == [
        "rank-0", "rank-0/nodes-0.pt", "rank-0/run.json", "rank-1", "rank-1/nodes-0.pt", "rank-1/run.json"]
    assert_same_circuit(json.loads((tmp_path / "resumed.json").read_text()), one_process)
    assert not (tmp_path / "resumed.json.run").exists()


def test_shares_are_contiguous_and_fewer_pairs_than_ranks_is_refused(monkeypatch):
    assert distributed.shares(7, 2) == [4, 3] and distributed.shares(9, 4) == [3, 2, 2, 2]
    batches = [random_batch(2, seed=1), random_batch(5, seed=2)]
    monkeypatch.setenv("WORLD_SIZE", "3")
    parts = []
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        parts.append(distributed.shard(batches))
    assert [[len(b) for b in p] for p in parts] == [[2, 1], [2], [2]]  # 3, 2, 2 pairs: batch 2 is split
    assert torch.equal(torch.cat([b.clean for p in parts for b in p]), torch.cat([b.clean for b in batches]))
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(UsageError, match="7 pair.s. cannot be split over 8 ranks"):
        distributed.shard(batches)


def test_one_run_layout_is_never_taken_for_the_other(monkeypatch, tmp_path, capsys):
    from featurecircuits.checkpoint import RunDir
    from featurecircuits.cli import main
    from featurecircuits.config import AblationConfig
    from featurecircuits.evaluation import check_ranks

    base = tmp_path / "c.json.run"
    base.mkdir()
    for r in (0, 1):  # what an interrupted two-rank run leaves
        with RunDir(base / f"rank-{r}", {"command": "discover", "world_size": 2}) as run:
            run.save("nodes-0", {"x": r})
    args = ["discover", "--task", "sva-rc", "--out", str(tmp_path / "c.json")]
    for extra in ([], ["--resume"]):  # one process neither resumes nor discards the ranks' units
        assert main([*args, *extra]) == 2
        assert f"{base} holds an interrupted run over 2 ranks: continue it with torchrun --nproc-per-node 2" in \
            capsys.readouterr().err
    assert sorted(p.name for p in (base / "rank-1").iterdir()) == ["nodes-0.pt", "run.json"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="resample ablation is not split over ranks"):
        check_ranks(AblationConfig(ablation="resample"))
    check_ranks(AblationConfig(ablation="mean"))


# --------------------------------------------------------------------------------------------------
# The command line on the organism


@pytest.mark.organism
def test_torchrun_discover_writes_the_one_process_circuit_once(tmp_path, one_process):
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun) if torchrun.exists() else "torchrun", "--nproc-per-node", "2",
                           "--master-port", str(_free_port()), "--module", "featurecircuits", *CLI,
                           "--out", str(tmp_path / "two.json")], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("nodes,") == 1, proc.stdout  # rank 0 alone reports
    got = json.loads((tmp_path / "two.json").read_text())
    assert_same_circuit(got, one_process)
    assert (got["metadata"]["world_size"], got["metadata"]["ranks"]) == (2, [4, 3])
    assert not (tmp_path / "two.json.run").exists()


@pytest.mark.parametrize("argv", [["compare", "--n", "4", "--out", "{t}/cmp"],
                                  ["features", "--model", "organism", "--out", "{t}/dossiers"]])
def test_commands_that_do_not_split_their_work_are_refused_under_torchrun(argv, tmp_path, capsys, monkeypatch):
    from featurecircuits.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([a.replace("{t}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"{argv[0]} does not split its work over torchrun's ranks" in err and "one process" in err
    assert list(tmp_path.iterdir()) == []  # nothing made
