"""Task generators and loaders."""

from __future__ import annotations

import json

import pytest

from featurecircuits import tasks
from featurecircuits.organism import corpus
from featurecircuits.organism.tokenizer import build_word_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(corpus.vocabulary())


def test_ioi_patch_swaps_subject_and_indirect_object_everywhere(tok):
    ex = tasks.ioi_example("then", "Alice", "Bob", "store", "book")
    assert ex["clean_prefix"] == "Then, Bob and Alice went to the store. Bob gave a book to"
    assert ex["patch_prefix"] == "Then, Alice and Bob went to the store. Alice gave a book to"
    assert (ex["clean_answer"], ex["patch_answer"]) == (" Alice", " Bob")
    for ex in tasks.make_task("ioi", 60, seed=3):
        swap = ex["clean_prefix"].replace(ex["clean_answer"][1:], "@").replace(ex["patch_answer"][1:],
                                                                               ex["clean_answer"][1:])
        assert swap.replace("@", ex["patch_answer"][1:]) == ex["patch_prefix"]
        assert len(tok.encode(ex["clean_prefix"])) == len(tok.encode(ex["patch_prefix"]))


def test_ioi_cycles_the_three_templates_and_uses_held_out_pairs():
    exs = tasks.make_task("ioi", 30, seed=0)
    assert [e["template"] for e in exs[:3]] == ["then", "when", "after"]
    held = set(corpus.heldout_name_pairs())
    assert all(tuple(sorted((e["clean_answer"][1:], e["patch_answer"][1:]))) in held for e in exs)


@pytest.mark.parametrize("name", [n for n in tasks.TASK_NAMES if n.startswith("sva")])
def test_sva_pairs_differ_only_in_number(name, tok):
    exs = tasks.make_task(name, 40, seed=1)
    for ex in exs:
        c, p = ex["clean_prefix"].split(), ex["patch_prefix"].split()
        assert len(c) == len(p) and sum(a != b for a, b in zip(c, p, strict=True)) == 1
        assert ex["clean_answer"] != ex["patch_answer"]
    task = tasks.Task(name, exs)
    tasks.validate(task, tok)  # single-token answers, equal lengths


def test_sva_within_rc_answer_agrees_with_the_clause_subject():
    ex = tasks.sva_example("within_rc", ("athlete", "athletes"), False, other=("manager", "managers"),
                           other_plural=True)
    assert ex["clean_prefix"] == "The athlete that the managers"
    assert ex["patch_prefix"] == "The athlete that the manager"
    assert (ex["clean_answer"], ex["patch_answer"]) == (" like", " likes")
    ex = tasks.sva_example("rc", ("athlete", "athletes"), False, other=("manager", "managers"), other_plural=True)
    assert ex["clean_prefix"] == "The athlete that the managers like"
    assert (ex["clean_answer"], ex["patch_answer"]) == (" is", " are")


def test_seeds_are_reproducible():
    assert tasks.make_task("sva-pp", 20, seed=5) == tasks.make_task("sva-pp", 20, seed=5)
    assert tasks.make_task("ioi", 20, seed=5) != tasks.make_task("ioi", 20, seed=6)


def test_round_trip_and_batches_group_by_length(tmp_path, tok):
    path = tasks.save_task(tasks.make_task("ioi", 9, seed=0), tmp_path / "ioi.jsonl")
    task = tasks.load_task(path, tok)
    assert len(task) == 9 and task.counts == {"then": 3, "when": 3, "after": 3}
    batches = task.batches(tok, batch_size=4)
    assert sorted(len(b) for b in batches) == [2, 3, 4]  # 'after' is one token shorter than the others
    assert sum(len(b) for b in batches) == 9


def test_loader_errors(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tasks.load_task(tmp_path / "none.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="holds no examples"):
        tasks.load_task(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"clean_prefix": "The doctor", "patch_prefix": "The doctors"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field clean_answer: required field is missing"):
        tasks.load_task(bad)
    multi = tmp_path / "multi.jsonl"
    multi.write_text(json.dumps({"clean_prefix": "The doctor", "patch_prefix": "The doctors",
                                 "clean_answer": " is happy", "patch_answer": " are"}) + "\n")
    with pytest.raises(ValueError, match=r"example 1: answer ' is happy' must be a single token but is 2"):
        tasks.load_task(multi, tok)
    uneven = tmp_path / "uneven.jsonl"
    uneven.write_text(json.dumps({"clean_prefix": "The doctor", "patch_prefix": "The old doctors",
                                  "clean_answer": " is", "patch_answer": " are"}) + "\n")
    with pytest.raises(ValueError, match="clean prefix has 2 tokens .* but patch prefix has 3"):
        tasks.load_task(uneven, tok)
    with pytest.raises(ValueError, match="unknown task 'sva-x'"):
        tasks.make_task("sva-x")


def test_words_outside_the_vocabulary_are_errors(tmp_path, tok):
    from featurecircuits.data import single_token

    with pytest.raises(ValueError, match="' Zebediah' is not in the tokenizer's vocabulary"):
        single_token(tok, " Zebediah")
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"clean_prefix": "The wombat", "patch_prefix": "The wombats",
                               "clean_answer": " is", "patch_answer": " are"}) + "\n")
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        tasks.load_task(odd, tok)


@pytest.mark.parametrize("words", ["organism", "pythia"])
@pytest.mark.parametrize("name", tasks.TASK_NAMES)
def test_generated_pairs_are_distinct_and_capped_by_the_distinct_pairs_there_are(name, words):
    n = tasks.n_distinct(name, words)
    exs = tasks.make_task(name, min(n, 150), seed=0, words=words)
    assert len({tuple(e[f] for f in tasks.FIELDS) for e in exs}) == len(exs)
    with pytest.raises(ValueError, match=f"only {n} distinct pairs"):
        tasks.make_task(name, n + 3, seed=0, words=words)  # +3: IOI cycles three templates


def test_counts_below_one_are_errors():
    for n in (0, -5):
        with pytest.raises(ValueError, match="positive integer"):
            tasks.make_task("ioi", n)


@pytest.mark.parametrize("path", sorted(__import__("pathlib").Path("tasks").glob("*/*.jsonl")))
def test_shipped_task_files_hold_distinct_pairs(path):
    task = tasks.load_task(path)
    assert len({tuple(e[f] for f in tasks.FIELDS) for e in task.examples}) == len(task)


def test_duplicate_pairs_are_a_warning(tmp_path, caplog):
    path = tasks.save_task(tasks.make_task("sva-rc", 3, seed=0) * 2, tmp_path / "dup.jsonl")
    with caplog.at_level("WARNING"):
        assert len(tasks.load_task(path)) == 6
    assert "3 of 6 pairs repeat an earlier pair (3 distinct)" in caplog.text


@pytest.mark.parametrize("kwargs", [{"n_examples": 0}, {"n_examples": -5}, {"batch_size": 0}, {"batch_size": -1},
                                    {"batch_size": 2.5}, {"n_examples": True}])
def test_api_counts_are_checked(kwargs, tok):
    task = tasks.Task("ioi", tasks.make_task("ioi", 6, seed=0))
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        tasks.as_batches(task, tok, **kwargs)


def test_generated_tasks_draw_only_single_token_words_for_the_tokenizer():
    from featurecircuits.tasks import make_task, n_distinct
    from featurecircuits.words import PYTHIA_WORDS, restrict, words_for

    class Tokenizer:  # every word one token, except "hates"
        unk_token_id = None

        def encode(self, text, add_special_tokens=False):
            return [1, 2] if text.strip() == "hates" else [1]

    tok = Tokenizer()
    assert words_for(tok) == "organism"  # the first list that fits
    kept = restrict(PYTHIA_WORDS, tok)
    assert ("hates", "hate") not in kept.rc_verbs and len(kept.rc_verbs) == len(PYTHIA_WORDS.rc_verbs) - 1
    examples = make_task("sva-within-rc", 30, words="pythia", tokenizer=tok)
    assert examples and not any(" hates" in e["clean_prefix"] + e["patch_prefix"] + e["clean_answer"] for e in examples)
    assert n_distinct("sva-within-rc", "pythia", tokenizer=tok) < n_distinct("sva-within-rc", "pythia")
    assert make_task("ioi", 10, words="pythia", tokenizer=tok) == make_task("ioi", 10, words="pythia")
