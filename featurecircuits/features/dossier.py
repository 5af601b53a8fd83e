"""Feature dossiers: what every feature of every dictionary does on a corpus, from one streaming pass.

:func:`build_dossiers` runs the model once per batch of corpus rows, captures every dictionary's submodule
in that one forward (as :class:`~featurecircuits.splice.Splice` does), encodes it with the dictionary (no
gradients), keeps the nonzero activations and folds them into a fixed-size :class:`~.state.FeatureState`
per dictionary: top-k distinct contexts, samples per activation band, random firing contexts, density and
a histogram (binning in :mod:`.state`). Memory is the dictionaries plus a few dozen contexts per feature,
whatever the corpus size. Rows longer than ``seq_len`` are cut into rows of ``seq_len`` (contexts never
cross a row). With ``checkpoint`` (a :class:`~featurecircuits.checkpoint.RunDir`) the state is saved every
``checkpoint_every`` batches and a rerun on the same folder continues to the same result.

:class:`Dossiers` is the result: ``card(submodule, feature)`` and ``cards(node_ids)`` give JSON-able
cards (:mod:`.cards`), ``save``/``load`` keep it as safetensors plus a JSON manifest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from ..fileio import atomic_write_bytes, atomic_write_text
from ..splice import Splice, run
from .cards import feature_card
from .corpus import Corpus
from .effects import INPUT_SIDE_SUBMODULES, input_tokens, output_tokens
from .labels import Label, auto_label, feature_node_id, merge_labels
from .state import CHUNK_ELEMENTS, FeatureState, Windows, chunks, encode_events

try:
    from ..nodes import parse_node_id
except ImportError:  # releases where node ids are parsed in circuit.py
    from ..circuit import parse_node_id

__all__ = ["FORMAT_VERSION", "MANIFEST", "DossierConfig", "Dossiers", "build_dossiers", "dictionary_hash",
           "dossier_key"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DossierConfig:
    """What a dossier keeps per feature, and how the corpus is batched (all part of the cache key)."""

    k: int = 10  # top contexts (distinct token windows)
    context: tuple[int, int] = (8, 3)  # tokens kept before and after the firing token
    n_quantile_samples: int = 2  # sampled contexts per activation band
    n_bands: int = 4  # activation bands (equal intervals of the histogram range)
    n_random: int = 4  # contexts sampled uniformly over all firings
    n_bins: int = 32  # histogram bins (a multiple of n_bands)
    batch_size: int | None = None  # rows per forward (None: as many as fit in batch_tokens)
    batch_tokens: int = 4096  # tokens per forward (activations of every submodule are held for one batch)
    seq_len: int = 128  # longer corpus sequences are cut into rows of this length
    max_tokens: int | None = None  # stop after this many tokens
    seed: int = 0  # of the sampling keys

    def __post_init__(self):
        context = tuple(self.context) if isinstance(self.context, (list, tuple)) else ()
        if len(context) != 2 or any(not isinstance(c, int) or c < 0 for c in context):
            raise ValueError(f"context must be (tokens before, tokens after), two integers ≥ 0, got {self.context!r}")
        object.__setattr__(self, "context", context)
        for name in ("k", "n_bands", "n_bins", "batch_tokens", "seq_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("n_quantile_samples", "n_random", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer ≥ 0, got {getattr(self, name)!r}")
        if self.n_bins % self.n_bands:
            raise ValueError(f"n_bins ({self.n_bins}) must be a multiple of n_bands ({self.n_bands})")
        for name in ("max_tokens", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")

    @classmethod
    def make(cls, config: DossierConfig | None = None, **options) -> DossierConfig:
        valid = [f.name for f in dataclasses.fields(cls)]
        bad = sorted(set(options) - set(valid))
        if bad:
            raise ValueError(f"unknown dossier option(s) {', '.join(bad)}; valid: {', '.join(valid)}")
        return dataclasses.replace(config or cls(), **options)

    @property
    def window(self) -> int:
        return self.context[0] + self.context[1] + 1

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "context": list(self.context)}


def dictionary_hash(ae) -> str:
    """The dictionary's weight hash (recorded at load time, else computed)."""
    return ae.source.hash or ae.weights_hash()


def _rows(corpus, seq_len: int, max_tokens: int | None) -> Iterator[list[int]]:
    """Corpus sequences cut into rows of at most ``seq_len``, stopping after ``max_tokens`` tokens."""
    total = 0
    for seq in corpus:
        for start in range(0, len(seq), seq_len):
            row = seq[start:start + seq_len]
            if max_tokens is not None:
                row = row[: max_tokens - total]
            if not row:
                return
            total += len(row)
            yield row


def _batches(corpus, cfg: DossierConfig, skip: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(first row index, ids (B, T) right-padded, lengths) from row ``skip`` on."""
    batch: list[list[int]] = []
    first, longest = skip, 0
    for i, row in enumerate(_rows(corpus, cfg.seq_len, cfg.max_tokens)):
        if i < skip:
            continue
        padded = (len(batch) + 1) * max(longest, len(row))  # tokens of the batch with this row, padded
        if batch and (len(batch) == cfg.batch_size or padded > cfg.batch_tokens):
            yield first, *_pad(batch)
            first, batch, longest = first + len(batch), [], 0
        batch.append(row)
        longest = max(longest, len(row))
    if batch:
        yield first, *_pad(batch)


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    return ids, lengths


def _capture(model, splice: Splice, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every submodule's activation on ``ids`` from one forward (right padding is harmless: causal)."""
    store: dict[str, torch.Tensor] = {}

    def edit(sub, x):
        store[sub.name] = x.detach()

    with torch.no_grad():
        run(model, ids.to(model.device), edit, splice.submodules, logits_to_keep=1)
    return store


def _salt(seed: int, sub: int) -> int:
    """The sampling keys' salt of one dictionary (keys hash each firing's place: see ``state.sampling_keys``)."""
    return (seed * 1_000_003 + sub) * 0x9E3779B1 % 2**62


def _empty_states(splice: Splice, cfg: DossierConfig) -> dict[str, FeatureState]:
    return {name: FeatureState.empty(ae.width, k=cfg.k, window=cfg.window, n_bins=cfg.n_bins, n_bands=cfg.n_bands,
                                     n_quantile_samples=cfg.n_quantile_samples, n_random=cfg.n_random,
                                     device=ae.decoder_rows.device)
            for name, ae in splice.dictionaries.items()}


def _resume(checkpoint, states: dict[str, FeatureState], key: str) -> dict:
    """Load the last saved state from the run folder (if any); returns the progress it records."""
    done = {"batches": 0, "rows": 0, "tokens": 0, "slot": "b"}
    if checkpoint is None or "progress" not in checkpoint:
        return done
    saved = checkpoint.load("progress")
    if saved.get("key") != key:
        raise UsageError(f"the run folder {checkpoint.path} holds dossiers of other inputs or settings; remove it "
                         "or use another folder")
    for name, state in states.items():
        device = state.count.device
        tensors = checkpoint.load(f"state-{saved['slot']}-{name}")
        states[name] = FeatureState.from_tensors({k: v.to(device) for k, v in tensors.items()})
    log.info("dossiers: resuming after %d batches (%d tokens)", saved["batches"], saved["tokens"])
    return saved


def _save_checkpoint(checkpoint, states: dict[str, FeatureState], done: dict) -> None:
    """Write the state to the slot not in use, then point ``progress`` at it (an interruption while writing
    leaves the previous slot and its progress intact)."""
    slot = "a" if done["slot"] == "b" else "b"
    for name, state in states.items():
        checkpoint.save(f"state-{slot}-{name}", {k: v.detach().cpu() for k, v in state.tensors().items()})
    done["slot"] = slot
    checkpoint.save("progress", dict(done))


def _fold(splice: Splice, states, acts, ids, lengths, first: int, cfg: DossierConfig) -> None:
    """Encode each submodule's activations with its dictionary, chunk by chunk of whole rows, and fold the
    firings into its state."""
    windows: dict = {}
    for i, sub in enumerate(splice.submodules):
        ae, state = splice.dictionaries[sub.name], states[sub.name]  # i salts the dictionary's sampling keys
        device = state.count.device
        x = acts.pop(sub.name).to(device)
        budget = CHUNK_ELEMENTS["cpu" if device.type == "cpu" else "other"]
        for b0, b1 in chunks(lengths, ae.width, budget):
            if (device, b0, b1) not in windows:
                windows[device, b0, b1] = Windows(ids[b0:b1].to(device), lengths[b0:b1].to(device), first + b0,
                                                  *cfg.context)
            w = windows[device, b0, b1]
            events = encode_events(ae, x[b0:b1][w.b, w.t])
            state.update(events, w, _salt(cfg.seed, i))
            del events


def _metadata(model, splice: Splice, corpus: Corpus, cfg: DossierConfig) -> dict:
    from .identity import cache_key, key_record

    hashes = {name: dictionary_hash(ae) for name, ae in splice.dictionaries.items()}
    record = key_record(model, hashes, corpus.describe(), cfg.to_dict(), FORMAT_VERSION)
    sources = {name: {"hash": hashes[name], "width": ae.width, "format": ae.source.format, "path": ae.source.path}
               for name, ae in splice.dictionaries.items()}
    return {"key": cache_key(record), "model": record["model"], "dictionaries": sources,
            "submodules": [s.name for s in splice.submodules], "corpus": record["corpus"], "config": record["config"]}


def dossier_key(model, dictionaries: dict, corpus: Corpus, config: DossierConfig) -> str:
    """The cache key of these inputs and settings (:mod:`.identity`)."""
    return _metadata(model, Splice(model, dictionaries), corpus, config)["key"]


def build_dossiers(model, dictionaries: dict, corpus, *, config: DossierConfig | None = None, progress: bool = True,
                   checkpoint=None, checkpoint_every: int = 25, **options) -> Dossiers:
    """Dossiers of every feature of ``dictionaries`` (submodule → Dictionary) on ``corpus`` (a
    :class:`~.corpus.Corpus`, or token-id sequences), in one streaming pass. ``options`` are
    :class:`DossierConfig` fields: ``k``, ``context=(left, right)``, ``n_quantile_samples``, ``n_bands``,
    ``n_random``, ``n_bins``, ``batch_size``, ``batch_tokens``, ``seq_len``, ``max_tokens``, ``seed``."""
    from .corpus import TokenCorpus

    cfg = DossierConfig.make(config, **options)
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every}")
    splice = Splice(model, dictionaries)
    if not splice.dictionaries:
        raise UsageError("dossiers need dictionaries: give at least one submodule → dictionary")
    corpus = corpus if isinstance(corpus, Corpus) else TokenCorpus(corpus)
    meta = _metadata(model, splice, corpus, cfg)
    states = _empty_states(splice, cfg)
    done = {**_resume(checkpoint, states, meta["key"]), "key": meta["key"]}
    bar = tqdm(total=cfg.max_tokens, initial=done["tokens"], unit="tok", desc="dossiers", disable=not progress)
    for first, ids, lengths in _batches(corpus, cfg, done["rows"]):
        _fold(splice, states, _capture(model, splice, ids), ids, lengths, first, cfg)
        done.update(batches=done["batches"] + 1, rows=first + len(lengths), tokens=done["tokens"] + int(lengths.sum()))
        bar.update(int(lengths.sum()))
        if checkpoint is not None and done["batches"] % checkpoint_every == 0:
            _save_checkpoint(checkpoint, states, done)
    bar.close()
    meta.update(n_rows=done["rows"], n_tokens=done["tokens"], n_batches=done["batches"])
    log.info("dossiers: %d tokens in %d rows, %d dictionaries", done["tokens"], done["rows"], len(states))
    return Dossiers(states, meta, model=model, dictionaries=splice.dictionaries)


class Dossiers:
    """Per-feature statistics of a set of dictionaries on a corpus, with cards and labels.

    ``model`` (optional) decodes tokens and gives the token side of cards (:mod:`.effects`); ``dictionaries``
    (optional, checked against the recorded hashes) gives their decoder and encoder rows."""

    def __init__(self, states: dict[str, FeatureState], metadata: dict, *, model=None, dictionaries=None,
                 labels: dict[str, Label] | None = None, tokenizer=None):
        self.states, self.metadata = states, metadata
        self.labels: dict[str, Label] = dict(labels or {})
        self.model, self.dictionaries, self._tokenizer = None, {}, tokenizer
        self._effects: dict[tuple[str, int], dict] = {}
        if model is not None:
            self.attach(model, dictionaries)

    @property
    def submodules(self) -> list[str]:
        return list(self.states)

    @property
    def key(self) -> str:
        return self.metadata["key"]

    @property
    def config(self) -> DossierConfig:
        return DossierConfig(**{**self.metadata["config"], "context": tuple(self.metadata["config"]["context"])})

    @property
    def tokenizer(self):
        return self._tokenizer if self._tokenizer is not None else getattr(self.model, "tokenizer", None)

    def attach(self, model, dictionaries: dict | None = None) -> Dossiers:
        """Use ``model`` (tokens, output side) and ``dictionaries`` (weights; must match the recorded hashes)."""
        dictionaries = {model.submodule(k).name: v for k, v in (dictionaries or {}).items()}
        stale = [name for name, ae in dictionaries.items() if name in self.states
                 and dictionary_hash(ae) != self.metadata["dictionaries"][name]["hash"]]
        if stale:
            raise UsageError(f"the dossiers were built with other dictionaries for {', '.join(stale)}; rebuild them")
        self.model, self.dictionaries = model, dictionaries
        self._effects.clear()
        return self

    def add_labels(self, labels: dict[str, Label]) -> None:
        """User or Neuronpedia labels (node id → Label); they outrank the automatic ones."""
        self.labels = merge_labels(self.labels, {feature_node_id(n): lab for n, lab in labels.items()})

    def _feature_effects(self, submodule: str, features: list[int], n: int = 10) -> None:
        """Fill the effects cache for ``features`` of one submodule (one matmul for all of them)."""
        ae = self.dictionaries.get(submodule)
        todo = [f for f in features if (submodule, f) not in self._effects]
        if ae is None or self.model is None or not todo:
            return
        idx = torch.tensor(todo, device=ae.decoder_rows.device)
        tv, ti, bv, bi = output_tokens(self.model, ae.decoder_rows[idx], n)
        enc = ae.encoder_rows if submodule in INPUT_SIDE_SUBMODULES else None
        iv, ii = input_tokens(self.model, enc[idx], n) if enc is not None else (None, None)
        for j, f in enumerate(todo):
            pairs = lambda v, i, j=j: list(zip(i[j].tolist(), v[j].tolist(), strict=True))  # noqa: E731
            self._effects[(submodule, f)] = {"promoted": pairs(tv, ti), "suppressed": pairs(bv, bi),
                                             "input_tokens": pairs(iv, ii) if iv is not None else None}

    def card(self, submodule: str, feature: int) -> dict:
        """One feature's card (:mod:`.cards`), with its label and label source."""
        if submodule not in self.states:
            raise UsageError(f"no dossier for submodule {submodule!r}; dossiers cover {', '.join(self.states)}")
        self._feature_effects(submodule, [feature])
        card = feature_card(self.states[submodule], submodule, feature, tokenizer=self.tokenizer,
                            left=self.config.context[0], n_tokens=int(self.metadata.get("n_tokens", 0)),
                            corpus=self.metadata["corpus"], effects=self._effects.get((submodule, feature)))
        auto = auto_label(card)
        known = merge_labels({card["node_id"]: Label(auto, "auto")} if auto else {},
                             {k: v for k, v in self.labels.items() if k == card["node_id"]})
        chosen = known.get(card["node_id"])
        card["label"], card["label_source"] = (chosen.text, chosen.source) if chosen else (None, None)
        card["labels"] = {"auto": auto, **{lab.source: lab.text for k, lab in self.labels.items()
                                           if k == card["node_id"]}}
        return card

    def cards(self, node_ids) -> dict[str, dict]:
        """Cards of the feature nodes among ``node_ids`` (``resid_3/f12``, ``resid_3/f12@5``), keyed by the
        given id; error, component and metric nodes, and submodules without a dossier, are skipped."""
        wanted: dict[str, tuple[str, int]] = {}
        for node in node_ids:
            sub, part, feat, _ = parse_node_id(node)  # malformed ids are an error; "logit" parses
            if part == "act" and feat is not None and sub in self.states:
                wanted[node] = (sub, feat)
        for sub in {s for s, _ in wanted.values()}:
            self._feature_effects(sub, sorted({f for s, f in wanted.values() if s == sub}))
        return {node: self.card(sub, feat) for node, (sub, feat) in wanted.items()}

    # -- storage ------------------------------------------------------------------------------------
    def save(self, folder) -> Path:
        """``<submodule>.safetensors`` per dictionary, then ``manifest.json`` (written last: a folder with a
        manifest is complete)."""
        from safetensors.torch import save as to_bytes

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, state in self.states.items():
            data = to_bytes({k: v.detach().cpu().contiguous() for k, v in state.tensors().items()})
            atomic_write_bytes(folder / f"{name}.safetensors", lambda f, d=data: f.write(d))
        manifest = {"format": "featurecircuits-dossiers", "version": FORMAT_VERSION, "metadata": self.metadata,
                    "labels": {k: v.to_dict() for k, v in sorted(self.labels.items())}}
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder, *, model=None, dictionaries=None, tokenizer=None) -> Dossiers:
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{folder} holds no readable dossiers ({exc}); build them again") from None
        if manifest.get("format") != "featurecircuits-dossiers" or manifest.get("version") != FORMAT_VERSION:
            raise UsageError(f"{folder / MANIFEST} is not a version-{FORMAT_VERSION} dossier manifest; rebuild it")
        meta = manifest["metadata"]
        states = {name: FeatureState.from_tensors(load_file(str(folder / f"{name}.safetensors")))
                  for name in meta["submodules"]}
        labels = {k: Label(**v) for k, v in manifest.get("labels", {}).items()}
        return cls(states, meta, model=model, dictionaries=dictionaries, labels=labels, tokenizer=tokenizer)
