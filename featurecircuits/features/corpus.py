"""Corpora for feature dossiers: iterables of token-id sequences, read as a stream (never whole in memory).

- :class:`OrganismCorpus`: the organism's own synthetic text (``organism.corpus.document``) from a fixed seed;
  the default for the model ``"organism"``.
- :class:`TextFileCorpus`: a plain text file, one document per line (``mode="lines"``) or the whole file as
  one token stream cut into ``chunk_tokens``-token pieces (``mode="chunks"``).
- :class:`JsonlCorpus`: a JSONL file whose lines are objects with a text field (``"text"``).
- :class:`HFDatasetCorpus`: a Hugging Face dataset, streamed with ``datasets`` (optional; never installed
  by us). Only tried for names that are not local files.
- :class:`TokenCorpus`: sequences already in memory, e.g. a task's own prompts (:func:`task_corpus`),
  which records ``task_prompts=True`` so that a card can say its contexts come from the task itself.

Every corpus has ``describe()``: a JSON-able record of where the text comes from (kind, path or name, the
limits, a content hash where cheap: a file's bytes up to 512 MiB, in-memory sequences, the organism's
generator settings plus a hash of its first sequences) that goes into the dossier cache key.
:func:`open_corpus` turns a user's spec (``None``, ``"organism"``, a path or a dataset name) into one.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import UsageError, located

__all__ = ["Corpus", "HFDatasetCorpus", "JsonlCorpus", "OrganismCorpus", "TextFileCorpus", "TokenCorpus",
           "open_corpus", "task_corpus"]

ORGANISM_SEED = 20250  # distinct from the training seeds (0 and 1), fixed so dossiers are reproducible
MODES = ("lines", "chunks")
HASH_LIMIT = 512 * 2**20  # files up to this size are hashed whole; larger ones by size and mtime
FILE_SUFFIXES = (".txt", ".text", ".jsonl", ".json", ".gz", ".csv", ".md")


class Corpus:
    """Base class: subclasses yield token-id lists from ``_sequences``; limits are applied here."""

    kind = "corpus"
    task_prompts = False

    def __init__(self, *, max_sequences: int | None = None, max_tokens: int | None = None):
        for name, value in (("max_sequences", max_sequences), ("max_tokens", max_tokens)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"{name} must be a positive integer or None, got {value!r}")
        self.max_sequences = max_sequences
        self.max_tokens = max_tokens

    def _sequences(self) -> Iterator[list[int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        n_seq = n_tok = 0
        for ids in self._sequences():
            if self.max_sequences is not None and n_seq >= self.max_sequences:
                return
            if self.max_tokens is not None:
                ids = ids[: self.max_tokens - n_tok]
            if not ids:
                if self.max_tokens is not None and n_tok >= self.max_tokens:
                    return
                continue
            n_seq += 1
            n_tok += len(ids)
            yield [int(i) for i in ids]

    def _source(self) -> dict:
        return {}

    def describe(self) -> dict:
        """Kind, where from, limits and (where cheap) a content hash; JSON-able."""
        return {"kind": self.kind, **self._source(), "max_sequences": self.max_sequences,
                "max_tokens": self.max_tokens, "task_prompts": self.task_prompts}


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text))


def _tokenizer_id(tokenizer) -> str:
    """A short hash of a tokenizer's vocabulary (a corpus of text depends on it)."""
    if tokenizer is None:
        return ""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]


def _chunked(docs: Iterable[list[int]], size: int, sep: int | None) -> Iterator[list[int]]:
    """Documents joined into one stream (``sep`` between them) and cut into ``size``-token pieces."""
    buf: list[int] = []
    for ids in docs:
        buf.extend(ids)
        if sep is not None:
            buf.append(sep)
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


class OrganismCorpus(Corpus):
    """The organism's synthetic corpus: ``n_sequences`` documents of ``seq_len`` tokens from ``seed``."""

    kind = "organism"

    def __init__(self, tokenizer, *, n_sequences: int = 512, seq_len: int = 32, seed: int = ORGANISM_SEED,
                 max_tokens: int | None = None):
        super().__init__(max_sequences=n_sequences, max_tokens=max_tokens)
        if tokenizer is None:
            raise UsageError("the organism corpus needs the organism's tokenizer (load_model('organism').tokenizer)")
        if seq_len < 1:
            raise UsageError(f"seq_len must be positive, got {seq_len}")
        self.tokenizer, self.seq_len, self.seed = tokenizer, seq_len, seed

    def _sequences(self):
        from ..organism import corpus

        rng = random.Random(self.seed)
        while True:
            yield corpus.document(rng, self.seq_len, self.tokenizer)

    def _source(self) -> dict:
        from ..organism import corpus

        rng = random.Random(self.seed)
        probe = [corpus.document(rng, self.seq_len, self.tokenizer) for _ in range(4)]
        return {"name": "organism synthetic corpus", "seed": self.seed, "seq_len": self.seq_len,
                "hash": hashlib.sha256(json.dumps(probe).encode()).hexdigest()[:16],
                "hash_of": "the first 4 sequences (the generator is deterministic)"}


class TokenCorpus(Corpus):
    """Token-id sequences held in memory (small: prompts, tests)."""

    kind = "tokens"

    def __init__(self, sequences: Iterable, *, name: str = "tokens", task_prompts: bool = False, **limits):
        super().__init__(**limits)
        self.sequences = [[int(i) for i in seq] for seq in sequences]
        self.name, self.task_prompts = name, task_prompts

    def _sequences(self):
        yield from self.sequences

    def _source(self) -> dict:
        return {"name": self.name, "n_sequences": len(self.sequences),
                "n_tokens": sum(len(s) for s in self.sequences),
                "hash": hashlib.sha256(json.dumps(self.sequences).encode()).hexdigest()[:16]}


def task_corpus(task, tokenizer) -> TokenCorpus:
    """A task's own prompts (clean and patch prefixes, each once) as a corpus marked ``task_prompts``."""
    seen: dict[str, None] = {}
    for ex in task.examples:
        seen.setdefault(ex["clean_prefix"])
        seen.setdefault(ex["patch_prefix"])
    return TokenCorpus([_encode(tokenizer, text) for text in seen], name=f"task {task.name} prompts",
                       task_prompts=True)


class _TextSource(Corpus):
    """Shared by text and JSONL files and datasets: documents (strings) → token sequences by ``mode``."""

    def __init__(self, tokenizer, *, mode: str = "lines", chunk_tokens: int = 128, **limits):
        super().__init__(**limits)
        if mode not in MODES:
            raise UsageError(f"unknown corpus mode {mode!r}; valid: {', '.join(MODES)}")
        if chunk_tokens < 1:
            raise UsageError(f"chunk_tokens must be positive, got {chunk_tokens}")
        if tokenizer is None:
            raise UsageError("a text corpus needs the model's tokenizer")
        self.tokenizer, self.mode, self.chunk_tokens = tokenizer, mode, chunk_tokens

    def _documents(self) -> Iterator[str]:
        raise NotImplementedError

    def _sequences(self):
        docs = (_encode(self.tokenizer, text) for text in self._documents())
        if self.mode == "lines":
            yield from docs
        else:
            yield from _chunked(docs, self.chunk_tokens, getattr(self.tokenizer, "eos_token_id", None))

    def _text_source(self) -> dict:
        out = {"mode": self.mode, "tokenizer": _tokenizer_id(self.tokenizer)}
        if self.mode == "chunks":
            out["chunk_tokens"] = self.chunk_tokens
        return out


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _file_record(path: Path) -> dict:
    stat = path.stat()
    if stat.st_size > HASH_LIMIT:
        return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return {"path": str(path), "size": stat.st_size, "hash": h.hexdigest()[:16]}


def _check_file(path) -> Path:
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"corpus file {path} does not exist; give an existing .txt or .jsonl file, "
                                "'organism', or a Hugging Face dataset name")
    if not path.is_file():
        raise UsageError(f"corpus {path} is not a file; give a .txt or .jsonl file")
    return path


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines, streamed; each line decoded alone so that an encoding
    error names its line."""
    with _open_bytes(path) as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise located(f"{path}:{lineno}", f"not UTF-8 text ({exc.reason}); re-save the file as UTF-8") \
                    from None
            if line.strip():
                yield lineno, line.rstrip("\r\n")


class TextFileCorpus(_TextSource):
    """A plain text file (``.gz`` read compressed): one document per non-blank line, or chunks."""

    kind = "text"

    def __init__(self, path, tokenizer, **options):
        self.path = _check_file(path)
        super().__init__(tokenizer, **options)

    def _documents(self):
        for _, text in _lines(self.path):
            yield text

    def _source(self) -> dict:
        return {**_file_record(self.path), **self._text_source()}


class JsonlCorpus(_TextSource):
    """A JSONL file of objects with a text ``field``; a malformed line is an error naming it."""

    kind = "jsonl"

    def __init__(self, path, tokenizer, *, field: str = "text", **options):
        self.path = _check_file(path)
        super().__init__(tokenizer, **options)
        self.field = field

    def _documents(self):
        for lineno, line in _lines(self.path):
            where = f"{self.path}:{lineno}"
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise located(where, f"not valid JSON ({exc}); each line must be one JSON object") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(self.field), str):
                keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
                raise located(where, f"expected an object with a string field {self.field!r} (found: {keys}); "
                                     "choose the field with field=... (--corpus-field)")
            yield obj[self.field]

    def _source(self) -> dict:
        return {**_file_record(self.path), "field": self.field, **self._text_source()}


class HFDatasetCorpus(_TextSource):
    """A Hugging Face dataset streamed with ``datasets`` (``load_dataset(name, config, split, streaming=True)``).
    Its record has no content hash (that would mean reading it all): pin ``revision`` for a fixed identity."""

    kind = "hf-dataset"

    def __init__(self, name: str, tokenizer, *, config: str | None = None, split: str = "train",
                 field: str = "text", revision: str | None = None, **options):
        super().__init__(tokenizer, **options)
        if importlib.util.find_spec("datasets") is None:
            raise UsageError(f"corpus {name!r} is not a local file, so it would be read as a Hugging Face "
                             "dataset, which needs the `datasets` package: pip install datasets (or give a local "
                             ".txt/.jsonl file)")
        self.name, self.config, self.split, self.field, self.revision = name, config, split, field, revision
        self._dataset = None

    def _open(self):
        if self._dataset is not None:
            return self._dataset
        import datasets

        try:
            self._dataset = datasets.load_dataset(self.name, self.config, split=self.split, streaming=True,
                                                  revision=self.revision)
        except Exception as exc:  # the hub raises many kinds (connection, not found, gated)
            raise UsageError(f"could not open the Hugging Face dataset {self.name!r} (split {self.split!r}): "
                             f"{type(exc).__name__}: {exc}. Offline or a wrong name? Give a local .txt or .jsonl "
                             "file instead, or put the dataset in the local cache (HF_DATASETS_OFFLINE=1)") from None
        return self._dataset

    def _documents(self):
        for i, row in enumerate(self._open()):
            text = row.get(self.field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise UsageError(f"dataset {self.name!r} row {i} has no string field {self.field!r} (fields: "
                                 f"{', '.join(row) if isinstance(row, dict) else '?'}); choose it with field=...")
            yield text

    def _source(self) -> dict:
        return {"name": self.name, "config": self.config, "split": self.split, "field": self.field,
                "revision": self.revision, **self._text_source()}


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.lower().endswith(FILE_SUFFIXES)


def open_corpus(spec, tokenizer, *, model_name: str | None = None, field: str = "text", mode: str = "lines",
                chunk_tokens: int = 128, max_sequences: int | None = None, max_tokens: int | None = None,
                **hf_options) -> Corpus:
    """A corpus from a spec: a :class:`Corpus` (returned as is); ``None`` (the organism's corpus, for the
    organism only); ``"organism"``; a local ``.jsonl``(``.gz``) or text file; else a Hugging Face dataset name
    (``hf:`` prefix optional)."""
    if isinstance(spec, Corpus):
        return spec
    limits = {"max_tokens": max_tokens}
    if spec is None or str(spec) == "organism":
        if spec is None and model_name != "organism":
            raise UsageError(f"no corpus given for model {model_name!r}; the organism's own corpus is only the "
                             "default for the organism: give a .txt/.jsonl file or a Hugging Face dataset name")
        return OrganismCorpus(tokenizer, n_sequences=max_sequences or 512, **limits)
    limits["max_sequences"] = max_sequences
    text = str(spec)
    options = {"mode": mode, "chunk_tokens": chunk_tokens, **limits}
    if text.startswith("hf:"):
        return HFDatasetCorpus(text[3:], tokenizer, field=field, **hf_options, **options)
    path = Path(text).expanduser()
    if path.exists() or _looks_like_path(text):
        name = path.name.lower().removesuffix(".gz")
        if name.endswith(".jsonl"):
            return JsonlCorpus(path, tokenizer, field=field, **options)
        return TextFileCorpus(path, tokenizer, **options)
    return HFDatasetCorpus(text, tokenizer, field=field, **hf_options, **options)
