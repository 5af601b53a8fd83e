"""The command line explains itself and survives interruption (issue 17): help without torch, defaults and
help text on every option, exit codes, one log line per message, atomic paired outputs that respect the
umask, and --resume giving exactly the uninterrupted result."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import featurecircuits
from featurecircuits.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def _parsers(parser: argparse.ArgumentParser, path=("featurecircuits",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_help_does_not_import_torch_and_is_fast():
    code = ("import sys, time; t = time.perf_counter(); from featurecircuits.cli import build_parser; "
            "p = build_parser(); [p.parse_args([c, '--help']) if False else None for c in ()]; p.format_help(); "
            "print(sorted(m for m in ('torch', 'transformers', 'nnsight') if m in sys.modules), "
            "time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    loaded, seconds = out.rsplit(" ", 1)
    assert loaded.strip() == "[]"
    assert float(seconds) < 2.0
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "featurecircuits", "discover", "--help"], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 0 and "--node-threshold" in result.stdout
    assert time.perf_counter() - start < 10  # a fresh interpreter on a loaded machine; torch alone takes 3-12 s


def test_every_option_has_help_and_shows_its_default():
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{' '.join(path)} {action.option_strings or action.dest} has no help text"
        text = parser.format_help()
        for action in parser._actions:
            default = action.default
            if action.option_strings and default not in (None, False, argparse.SUPPRESS) and \
                    not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                assert f"(default: {default})" in " ".join(text.split()), (path, action.option_strings)
    disc = dict(_parsers(build_parser()))[("featurecircuits", "discover")].format_help()
    assert "(default: 0.01)" in " ".join(disc.split())  # the edge threshold (the demo uses 0.02, and says so)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and featurecircuits.__version__ in capsys.readouterr().out


def test_unexpected_errors_exit_1_with_a_hint_and_debug_prints_the_traceback(monkeypatch, tmp_path, capsys):
    import featurecircuits.cli.tasks as tasks_command

    def boom(request):
        raise RuntimeError("something broke")

    monkeypatch.setattr(tasks_command, "run_make", boom)
    argv = ["tasks", "make", "ioi", "--out", str(tmp_path / "t.jsonl")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "unexpected RuntimeError: something broke" in err and "--debug" in err and "Traceback" not in err
    assert main([*argv, "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_exits_130_with_one_line_and_no_temporary_files(monkeypatch, tmp_path, capsys):
    from featurecircuits import fileio

    out = tmp_path / "t.jsonl"
    out.write_text("old\n")

    def interrupted_write(f):
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio, "atomic_write_text", lambda path, text: fileio.atomic_write_bytes(path,
                                                                                                    interrupted_write))
    monkeypatch.setattr("featurecircuits.tasks.atomic_write_text", fileio.atomic_write_text)
    assert main(["tasks", "make", "ioi", "--n", "3", "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert out.read_text() == "old\n" and os.listdir(tmp_path) == ["t.jsonl"]


def test_a_hub_warning_is_printed_once():
    """huggingface_hub prints through its own handler; the CLI's root handler used to print it again."""
    for setup in ("", "import huggingface_hub.utils._http; "):  # without and with the library's own handler
        code = (f"import logging; {setup}from featurecircuits import cli; cli.setup_logging(False); "
                "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].'); "
                "logging.getLogger('featurecircuits.tasks').warning('ours')")
        err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                             check=True).stderr
        assert err.count("Retrying in 1s") == 1 and err.count("ours") == 1, (setup, err)


# --------------------------------------------------------------------------------------------------
# Files


def test_outputs_respect_the_umask_and_paired_outputs_are_both_new_or_both_old(tmp_path):
    from featurecircuits.fileio import atomic_write_many, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.json", "{}")
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    (tmp_path / "c.json").write_text("old json")
    (tmp_path / "c.html").write_text("old html")

    def failing(f):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_many({tmp_path / "c.json": "new json", tmp_path / "c.html": failing})
    assert (tmp_path / "c.json").read_text() == "old json" and (tmp_path / "c.html").read_text() == "old html"
    atomic_write_many({tmp_path / "c.json": "new json", tmp_path / "c.html": "new html"})
    assert (tmp_path / "c.json").read_text() == "new json" and (tmp_path / "c.html").read_text() == "new html"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json", "c.html", "c.json"]


def test_temp_files_of_killed_processes_are_removed_by_the_next_write(tmp_path):
    from featurecircuits.fileio import atomic_write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".c.json.fc-{dead}-abc123.tmp"
    stale.write_text("")
    other = tmp_path / f".other.json.fc-{dead}-abc123.tmp"
    other.write_text("")
    atomic_write_text(tmp_path / "c.json", "{}")
    assert not stale.exists() and other.exists()


# --------------------------------------------------------------------------------------------------
# Interrupted runs


def _interrupt_after(monkeypatch, calls: int):
    """Ctrl-C at the ``calls``-th node-scoring attribution (after ``calls - 1`` batches completed)."""
    import featurecircuits.scoring as scoring

    real = scoring.attribute_splice
    count = {"n": 0}

    def attribute(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "attribute_splice", attribute)
    return lambda: monkeypatch.setattr(scoring, "attribute_splice", real)


@pytest.mark.organism
def test_discover_resumes_to_the_uninterrupted_result(monkeypatch, tmp_path, capsys):
    args = ["discover", "--task", "sva-rc", "--n-examples", "8", "--batch-size", "2", "--top-k", "12",
            "--edge-threshold", "0.05"]
    assert main([*args, "--out", str(tmp_path / "ref.json")]) == 0
    assert not (tmp_path / "ref.json.run").exists()  # removed when the run finishes

    out = tmp_path / "c.json"
    restore = _interrupt_after(monkeypatch, 3)
    assert main([*args, "--out", str(out), "--html", str(tmp_path / "c.html")]) == 130
    assert "--resume" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "c.html").exists()
    run = tmp_path / "c.json.run"
    assert sorted(p.name for p in run.iterdir()) == ["nodes-0.pt", "nodes-1.pt", "run.json"]
    restore()

    assert main([*args, "--top-k", "13", "--out", str(out), "--resume"]) == 2  # other settings: refused
    assert "differs in: top_k" in capsys.readouterr().err
    assert main([*args, "--out", str(out)]) == 2  # neither --resume nor --restart: nothing is discarded
    assert "holds an interrupted run, a discover run (2 checkpoints" in capsys.readouterr().err
    kept = (run / "nodes-1.pt").read_bytes()
    (run / "nodes-1.pt").write_bytes((run / "nodes-0.pt").read_bytes())  # a checkpoint swapped for another
    assert main([*args, "--out", str(out), "--resume"]) == 2
    assert f"checkpoint {run / 'nodes-1.pt'} has changed since it was saved" in capsys.readouterr().err
    (run / "nodes-1.pt").write_bytes(kept)
    assert sorted(p.name for p in run.iterdir()) == ["nodes-0.pt", "nodes-1.pt", "run.json"]
    assert main([*args, "--out", str(out), "--html", str(tmp_path / "c.html"), "--resume"]) == 0
    assert out.read_text() == (tmp_path / "ref.json").read_text()
    assert (tmp_path / "c.html").exists() and not run.exists()


@pytest.mark.organism
def test_curve_resumes_to_the_uninterrupted_result(monkeypatch, tmp_path, capsys):
    args = ["curve", "--task", "sva-rc", "--n-examples", "4", "--batch-size", "2", "--methods", "atp,relp",
            "--thresholds", "0.05,0.5"]
    assert main([*args, "--out", str(tmp_path / "ref.json")]) == 0
    restore = _interrupt_after(monkeypatch, 4)  # atp's 2 batches done and its points saved; relp's first done
    run = tmp_path / "runs"
    assert main([*args, "--out", str(tmp_path / "c.json"), "--run-dir", str(run)]) == 130
    assert sorted(p.name for p in run.iterdir()) == ["curve-atp.pt", "nodes-atp-0.pt", "nodes-atp-1.pt",
                                                     "nodes-relp-0.pt", "run.json"]
    restore()
    capsys.readouterr()
    discover = ["discover", "--task", "sva-rc", "--out", str(tmp_path / "d.json"), "--run-dir", str(run)]
    assert main(discover) == 2  # a discover pointed at the curve's run folder discards nothing
    assert "holds an interrupted run, a curve run (4 checkpoints" in capsys.readouterr().err
    assert main([*discover, "--resume"]) == 2
    assert "not a discover run" in capsys.readouterr().err
    assert len(list(run.iterdir())) == 5
    assert main([*args, "--out", str(tmp_path / "c.json"), "--run-dir", str(run), "--resume"]) == 0
    ref, got = (json.loads((tmp_path / n).read_text()) for n in ("ref.json", "c.json"))
    assert got == ref
    assert not run.exists()


@pytest.mark.organism
def test_compare_resumes_to_the_uninterrupted_result(monkeypatch, tmp_path, capsys):
    import featurecircuits.compare as compare

    args = ["compare", "--task", "ioi", "--n", "6", "--batch-size", "1", "--rules", "default;attention=ah"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    real, count = compare.attribute_splice, {"n": 0}

    def attribute(*a, **k):  # 4 attributions per batch (AP, AtP, two RelP rule sets); stop in the third
        count["n"] += 1
        if count["n"] == 10:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(compare, "attribute_splice", attribute)
    assert main([*args, "--out", str(tmp_path / "c")]) == 130
    run = tmp_path / "c.run"
    assert sorted(p.name for p in run.iterdir()) == ["compare-batch-0.pt", "compare-batch-1.pt", "run.json"]
    assert main([*args[:-1], "paper", "--out", str(tmp_path / "c"), "--resume"]) == 2  # other rule sets
    assert "differs in: rules" in capsys.readouterr().err
    monkeypatch.setattr(compare, "attribute_splice", real)
    assert main([*args, "--out", str(tmp_path / "c"), "--resume"]) == 0
    ref, got = (json.loads((tmp_path / n / "comparison.json").read_text()) for n in ("ref", "c"))
    assert got == ref
    assert not run.exists()


@pytest.mark.organism
@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_part_way_leaves_the_run_folder_and_no_temporary_files(tmp_path, sig, code, capsys):
    """A real signal to a running discover: its exit code, one line, the completed batches kept for --resume,
    no output and no temporary file anywhere. While it runs, a second run on its output is refused, naming it."""
    import signal

    out = tmp_path / "c.json"
    proc = subprocess.Popen([sys.executable, "-m", "featurecircuits", "discover", "--task", "sva-rc", "--n-examples",
                             "40", "--batch-size", "1", "--top-k", "5", "--out", str(out), "--html",
                             str(tmp_path / "c.html")], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    run = tmp_path / "c.json.run"
    deadline = time.time() + 300
    while time.time() < deadline and not (run.is_dir() and len(list(run.glob("nodes-*.pt"))) >= 2):
        time.sleep(0.05)
    for again in ([], ["--restart"], ["--resume"]):  # a second run on its output while it goes on: refused
        assert main(["discover", "--task", "sva-rc", "--top-k", "5", "--out", str(out), *again]) == 2
        assert f"c.json.run is in use by process {proc.pid} (featurecircuits discover, since" in \
            capsys.readouterr().err
    assert proc.poll() is None and (run / "run.json").is_file()  # the first run goes on, its folder intact
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].startswith(("interrupted", "terminated")) and "--resume" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json.run"]
    leftovers = [p.name for p in run.iterdir() if not p.name.endswith(".pt") and p.name != "run.json"]
    assert leftovers == []


@pytest.mark.organism
def test_a_generated_task_with_the_default_count_takes_the_distinct_pairs_there_are(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["discover", "--task", "sva-simple", "--top-k", "5", "--edge-threshold", "0.1", "--batch-size", "40",
                 "--out", str(out)]) == 0
    assert "sva-simple has only 17 distinct pairs in its discovery split" in capsys.readouterr().err
    assert json.loads(out.read_text())["metadata"]["n_examples"] == 17  # of the 40 there are, 23 are held out


# --------------------------------------------------------------------------------------------------
# Run folders owned by one run (issue 26)

HOLD = ("import sys, time; from featurecircuits.checkpoint import RunDir; "
        "run = RunDir(sys.argv[1], {'command': 'discover'}); print('ready', flush=True); time.sleep(120)")


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding a run folder (as a running discover does); returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_run_folder_held_by_another_process_is_refused_and_free_once_it_is_killed(tmp_path, capsys):
    import signal

    from featurecircuits.checkpoint import RunDir
    from featurecircuits.locking import FolderInUse, holder

    run = tmp_path / "c.json.run"
    proc = _holder(run)
    try:
        assert holder(run)["pid"] == proc.pid
        with pytest.raises(FolderInUse, match=f"in use by process {proc.pid}"):
            RunDir(run, {"command": "discover"}, resume=True)
        for again in (["--resume"], ["--restart"]):  # refused before anything loads, nothing discarded
            assert main(["discover", "--task", "ioi", "--out", str(tmp_path / "c.json"), *again]) == 2
            err = capsys.readouterr().err
            assert f"c.json.run is in use by process {proc.pid} (featurecircuits discover, since" in err, err
        assert sorted(p.name for p in run.iterdir()) == ["run.json", "run.lock"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run / "run.lock").is_file() and holder(run) is None  # the lock of a killed run is free
    resumed = RunDir(run, {"command": "discover"}, resume=True)
    assert resumed.units() == [] and holder(run)["pid"] == os.getpid()
    resumed.close()
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]
