"""Corpora for dossiers: the organism's own text by default, text and JSONL files (streamed, chunked,
limited), Hugging Face names only when no such file exists, and errors that name the file, line and fix."""

from __future__ import annotations

import gzip
import sys

import pytest

from featurecircuits.errors import UsageError
from featurecircuits.features import (
    HFDatasetCorpus,
    JsonlCorpus,
    OrganismCorpus,
    TextFileCorpus,
    TokenCorpus,
    open_corpus,
)
from tests.features.dossier_helpers import WORDS, word_model


@pytest.fixture(scope="module")
def tok():
    return word_model().tokenizer


def test_text_file_lines_and_chunks(tmp_path, tok):
    path = tmp_path / "c.txt"
    path.write_text(" ".join(WORDS[:5]) + "\n\n" + " ".join(WORDS[5:8]) + "\n")
    lines = open_corpus(str(path), tok)
    assert isinstance(lines, TextFileCorpus)
    assert [len(s) for s in lines] == [5, 3]
    chunks = open_corpus(path, tok, mode="chunks", chunk_tokens=3)
    assert [len(s) for s in chunks] == [3, 3, 3, 1]  # 5 + eos + 3 + eos tokens, cut in threes
    assert [len(s) for s in open_corpus(path, tok, max_tokens=6)] == [5, 1]
    assert [len(s) for s in open_corpus(path, tok, max_sequences=1)] == [5]
    record = lines.describe()
    assert record["kind"] == "text" and record["path"] == str(path) and len(record["hash"]) == 16
    path.write_text("w00\n")
    assert lines.describe()["hash"] != record["hash"]  # the content is part of the identity


def test_jsonl_and_gzip(tmp_path, tok):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "w00 w01"}\n{"text": "w02", "meta": 1}\n'))
    corpus = open_corpus(path, tok)
    assert isinstance(corpus, JsonlCorpus) and [len(s) for s in corpus] == [2, 1]
    other = tmp_path / "d.jsonl"
    other.write_text('{"body": "w00"}\n')
    assert [len(s) for s in open_corpus(other, tok, field="body")] == [1]


@pytest.mark.parametrize("content, what", [
    ('{"text": "w00"}\n{"text": "w01"\n', "c.jsonl:2: not valid JSON"),
    ('{"text": "w00"}\n\n{"body": "w01"}\n', "c.jsonl:3: expected an object with a string field 'text'"),
    ('["w00"]\n', "c.jsonl:1: expected an object"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, tok, content, what):
    path = tmp_path / "c.jsonl"
    path.write_text(content)
    with pytest.raises(UsageError, match=what):
        list(open_corpus(path, tok))


def test_bad_inputs(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        open_corpus("missing.txt", tok)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_corpus("./some/folder/corpus", tok)
    with pytest.raises(UsageError, match="not a file"):
        open_corpus(tmp_path, tok)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"w00\nw01 \xe9\n")
    with pytest.raises(UsageError, match=r"latin1.txt:2: not UTF-8"):
        list(open_corpus(bad, tok))
    with pytest.raises(UsageError, match="unknown corpus mode 'words'; valid: lines, chunks"):
        open_corpus(bad, tok, mode="words")
    with pytest.raises(UsageError, match="no corpus given for model 'gpt2'"):
        open_corpus(None, tok, model_name="gpt2")


def test_dataset_names_need_datasets_and_the_hub(tmp_path, tok, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "datasets" else object())
    with pytest.raises(UsageError, match="pip install datasets"):
        open_corpus("NeelNanda/pile-10k", tok)


def test_dataset_unreachable_hub_is_a_clear_error(tok, monkeypatch):
    class FakeDatasets:
        @staticmethod
        def load_dataset(*args, **kwargs):
            raise ConnectionError("Couldn't reach 'NeelNanda/pile-10k' on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    corpus = open_corpus("hf:NeelNanda/pile-10k", tok)
    assert isinstance(corpus, HFDatasetCorpus) and corpus.describe()["name"] == "NeelNanda/pile-10k"
    with pytest.raises(UsageError, match="could not open the Hugging Face dataset .*local .txt or .jsonl"):
        next(iter(corpus))


def test_organism_corpus_is_the_default_for_the_organism_and_deterministic():
    from featurecircuits.organism.train import make_tokenizer

    tok = make_tokenizer()
    corpus = open_corpus(None, tok, model_name="organism", max_sequences=5)
    assert isinstance(corpus, OrganismCorpus)
    first, again = list(corpus), list(OrganismCorpus(tok, n_sequences=5))
    assert first == again and [len(s) for s in first] == [32] * 5
    assert corpus.describe() == OrganismCorpus(tok, n_sequences=5).describe()
    assert OrganismCorpus(tok, n_sequences=5, seed=1).describe()["hash"] != corpus.describe()["hash"]


def test_token_corpus_limits():
    corpus = TokenCorpus([[1, 2, 3], [4, 5], [6]], max_tokens=4)
    assert list(corpus) == [[1, 2, 3], [4]]
    with pytest.raises(UsageError, match="max_tokens must be a positive integer"):
        TokenCorpus([[1]], max_tokens=0)
