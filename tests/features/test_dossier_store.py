"""Dossiers saved and loaded, reused from the cache without running the model, and resumed after an
interruption to the result of an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch

from featurecircuits.checkpoint import RunDir
from featurecircuits.errors import UsageError
from featurecircuits.features import Dossiers, Label, TokenCorpus, build_dossiers, cached_dossiers, task_corpus
from tests.conftest import random_dictionaries
from tests.features.dossier_helpers import random_sequences, word_model


@pytest.fixture(scope="module")
def setup():
    model = word_model(seed=3)
    return model, random_dictionaries(model, size=24, seed=3), TokenCorpus(random_sequences(24, seed=8))


def _same_state(a: Dossiers, b: Dossiers) -> None:
    assert list(a.states) == list(b.states)
    for name in a.states:
        ta, tb = a.states[name].tensors(), b.states[name].tensors()
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (name, k)


def test_save_load_round_trip(setup, tmp_path):
    model, dicts, corpus = setup
    dossiers = build_dossiers(model, dicts, corpus, batch_size=5, progress=False)
    dossiers.add_labels({"mlp_0/f3@2": Label("my label", "user", "test")})
    dossiers.save(tmp_path / "d")
    loaded = Dossiers.load(tmp_path / "d", model=model, dictionaries=dicts)
    _same_state(dossiers, loaded)
    assert loaded.metadata == json.loads(json.dumps(dossiers.metadata))
    for node in ("mlp_0/f3", "resid_1/f7", "embed/f0"):
        sub, feat = node.split("/f")
        assert loaded.card(sub, int(feat)) == dossiers.card(sub, int(feat))
    assert loaded.card("mlp_0", 3)["label"] == "my label"
    assert loaded.card("mlp_0", 3)["label_source"] == "user"
    bare = Dossiers.load(tmp_path / "d")  # no model: token ids shown, no token side
    assert bare.card("mlp_0", 3)["promoted"] is None
    other = random_dictionaries(model, size=24, seed=4)
    with pytest.raises(UsageError, match="other dictionaries"):
        Dossiers.load(tmp_path / "d", model=model, dictionaries=other)
    with pytest.raises(UsageError, match="no readable dossiers"):
        Dossiers.load(tmp_path / "missing")


def test_cache_reuses_a_previous_result_without_running_the_model(setup, tmp_path):
    model, dicts, corpus = setup
    forwards = []
    handle = model.hf.register_forward_hook(lambda *args: forwards.append(1))
    try:
        first = cached_dossiers(model, dicts, corpus, cache_root=tmp_path, batch_size=5, progress=False)
        assert len(forwards) == 5  # 24 rows in batches of 5
        again = cached_dossiers(model, dicts, corpus, cache_root=tmp_path, batch_size=5, progress=False)
        assert len(forwards) == 5
        _same_state(first, again)
        cached_dossiers(model, dicts, corpus, cache_root=tmp_path, batch_size=5, k=3, progress=False)
        assert len(forwards) == 10  # other settings: another key
    finally:
        handle.remove()
    assert (tmp_path / first.key / "manifest.json").is_file()
    assert len(list(tmp_path.iterdir())) == 2 and not list(tmp_path.glob("*.run"))  # run folders removed


class Interrupted(Exception):
    pass


def test_resume_after_interruption_gives_identical_dossiers(setup, tmp_path):
    model, dicts, corpus = setup
    whole = build_dossiers(model, dicts, corpus, batch_size=3, progress=False)
    run = RunDir(tmp_path / "run", {"what": "dossiers"})
    saves = []

    def stop():
        saves.append(1)
        if len(saves) == 20:  # in the middle of the third checkpoint (8 units each)
            raise Interrupted

    run.on_save = stop
    with pytest.raises(Interrupted):
        build_dossiers(model, dicts, corpus, batch_size=3, progress=False, checkpoint=run, checkpoint_every=1)
    resumed_run = RunDir(tmp_path / "run", {"what": "dossiers"}, resume=True)
    assert resumed_run.load("progress")["batches"] == 2
    forwards = []
    handle = model.hf.register_forward_hook(lambda *args: forwards.append(1))
    try:
        resumed = build_dossiers(model, dicts, corpus, batch_size=3, progress=False, checkpoint=resumed_run)
    finally:
        handle.remove()
    assert len(forwards) == 8 - 2  # 24 rows in batches of 3; two were kept
    _same_state(whole, resumed)
    assert resumed.metadata == whole.metadata
    with pytest.raises(UsageError, match="other inputs or settings"):
        build_dossiers(model, dicts, corpus, batch_size=4, progress=False, checkpoint=resumed_run)


def test_a_task_corpus_is_marked_on_every_card(setup):
    from featurecircuits.tasks import Task

    model, dicts, _ = setup
    task = Task("toy", [{"clean_prefix": "w01 w02 w03", "patch_prefix": "w04 w02 w03", "clean_answer": " w05",
                         "patch_answer": " w06"}])
    corpus = task_corpus(task, model.tokenizer)
    assert corpus.describe()["task_prompts"] and len(corpus.sequences) == 2
    dossiers = build_dossiers(model, dicts, corpus, progress=False)
    card = dossiers.card("resid_0", 0)
    assert card["corpus_is_task_prompts"] and card["corpus"]["name"] == "task toy prompts"
