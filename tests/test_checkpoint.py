"""Run folders through the API (issue 26): one run per folder (a lock the kernel releases), a manifest that
records what made the run and every checkpoint's hash, checkpoints refused once changed, and writes whose
errors name the file."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from featurecircuits.checkpoint import MANIFEST, RunDir, check_resumable, describe_run
from featurecircuits.errors import UsageError
from featurecircuits.fileio import WriteError, atomic_write_many
from featurecircuits.locking import LOCK_FILE, FolderInUse, FolderLock, holder

KEY = {"command": "discover", "top_k": 5}


def test_units_are_saved_with_their_hash_and_read_back(tmp_path):
    run = RunDir(tmp_path / "run", KEY)
    assert holder(tmp_path / "run")["command"] == "featurecircuits discover"
    run.save("nodes-0", {"x": torch.arange(3.0)})
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert manifest["key"] == KEY and manifest["made"]["pid"] == os.getpid()
    assert set(manifest["units"]) == {"nodes-0"} and len(manifest["units"]["nodes-0"]["sha256"]) == 64
    assert "nodes-0" in run and "nodes-1" not in run and run.units() == ["nodes-0"]
    assert torch.equal(run.load("nodes-0")["x"], torch.arange(3.0))
    run.close()
    assert sorted(os.listdir(tmp_path / "run")) == ["nodes-0.pt", "run.json"] and holder(tmp_path / "run") is None
    assert describe_run(tmp_path / "run").startswith("a discover run (1 checkpoint, started ")
    resumed = RunDir(tmp_path / "run", KEY, resume=True)
    assert torch.equal(resumed.load("nodes-0")["x"], torch.arange(3.0))
    resumed.remove()
    assert not (tmp_path / "run").exists()


def test_a_unit_file_not_in_the_manifest_is_not_a_completed_unit(tmp_path):
    run = RunDir(tmp_path / "run", KEY)
    torch.save({"x": 1}, tmp_path / "run" / "nodes-3.pt")  # copied in, or left by a kill between the two moves
    assert "nodes-3" not in run and run.units() == []
    run.close()


@pytest.mark.parametrize("change", ["flipped", "truncated", "emptied", "swapped", "removed"])
def test_a_changed_checkpoint_is_refused_naming_it(tmp_path, change):
    run = RunDir(tmp_path / "run", KEY)
    run.save("nodes-0", {"x": torch.ones(4)})
    run.save("nodes-1", {"x": 2 * torch.ones(4)})
    run.close()
    target = tmp_path / "run" / "nodes-1.pt"
    if change == "flipped":
        torch.save({"x": -2 * torch.ones(4)}, target)
    elif change in ("truncated", "emptied"):
        target.write_bytes(target.read_bytes()[:10 if change == "truncated" else 0])
    elif change == "swapped":
        target.write_bytes((tmp_path / "run" / "nodes-0.pt").read_bytes())
    else:
        target.unlink()
    expected = "is listed in .* but missing" if change == "removed" else "has changed since it was saved"
    with pytest.raises(UsageError, match=f"checkpoint {target}.*{expected}"):
        check_resumable(tmp_path / "run", "discover")
    with pytest.raises(UsageError, match=f"checkpoint {target}"):
        RunDir(tmp_path / "run", KEY, resume=True)
    assert holder(tmp_path / "run") is None  # the refused run let the folder go


def test_resume_refuses_another_command_or_other_settings(tmp_path):
    RunDir(tmp_path / "run", {"command": "curve", "top_k": 5}).save("curve-atp", {"x": 1})
    with pytest.raises(UsageError, match="holds a curve run .* not a discover run"):
        RunDir(tmp_path / "run", KEY, resume=True)
    with pytest.raises(UsageError, match="differs in: top_k"):
        RunDir(tmp_path / "run", {"command": "curve", "top_k": 6}, resume=True)


def test_a_fresh_run_that_saved_nothing_leaves_nothing(tmp_path):
    RunDir(tmp_path / "new", KEY).close()
    assert not (tmp_path / "new").exists()
    (tmp_path / "given").mkdir()  # a folder given empty is left as it was
    RunDir(tmp_path / "given", KEY).close()
    assert os.listdir(tmp_path / "given") == []


def test_a_folder_that_is_not_a_run_folder_is_never_touched(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a featurecircuits run folder"):
        RunDir(tmp_path / "mine", KEY)
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_in_one_process_a_folder_is_taken_over_or_refused(tmp_path):
    first = RunDir(tmp_path / "run", KEY)
    first.save("nodes-0", {"x": 1})
    with pytest.raises(FolderInUse, match=f"process {os.getpid()} — this process"):
        RunDir(tmp_path / "run", KEY, resume=True, takeover=False)
    second = RunDir(tmp_path / "run", KEY, resume=True)  # an interrupted cell, then a resumed one
    with pytest.raises(RuntimeError, match="no longer held"):
        first.save("nodes-1", {"x": 2})
    first.close()  # no effect: the folder is the second's now
    assert holder(tmp_path / "run")["pid"] == os.getpid()
    second.close()
    assert holder(tmp_path / "run") is None


def test_a_lock_file_left_by_a_dead_process_is_free(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "command": "featurecircuits curve"}))
    assert holder(folder) is None
    lock = FolderLock.acquire(folder, command="featurecircuits discover")
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (folder / LOCK_FILE).exists()


def test_a_failed_write_names_the_file_and_leaves_nothing(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "a.json").write_text("old")
    with pytest.raises(WriteError) as exc:
        atomic_write_many({tmp_path / "a.json": "new", tmp_path / "b.json": full})
    assert str(exc.value) == f"cannot write {tmp_path / 'b.json'}: No space left on device (free some space or " \
                             "write elsewhere)"
    assert isinstance(exc.value, OSError) and exc.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["a.json"] and (tmp_path / "a.json").read_text() == "old"


def test_a_run_folder_whose_first_write_fails_is_removed(tmp_path, monkeypatch):
    import featurecircuits.checkpoint as checkpoint

    def full(path, text):
        raise WriteError(path, OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(checkpoint, "atomic_write_text", full)
    with pytest.raises(WriteError, match="run.json: No space left"):
        RunDir(tmp_path / "run", KEY)
    assert os.listdir(tmp_path) == []
