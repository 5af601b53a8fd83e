"""Shared by the dossier tests: a tiny GPT-NeoX with a word tokenizer, a planted dictionary, corpora, and a
brute-force reference that keeps every firing."""

from __future__ import annotations

import torch

from featurecircuits.dictionaries import SAE
from featurecircuits.organism.tokenizer import SPECIAL, build_word_tokenizer
from tests.conftest import VOCAB, tiny_model

WORDS = [f"w{i:02d}" for i in range(VOCAB - len(SPECIAL))]  # one word per id 3 … VOCAB-1
PLANTED = {0: 7, 1: 19, 2: 33}  # feature → the token it fires on


def word_model(seed: int = 0):
    """The tiny GPT-NeoX with a word tokenizer whose VOCAB ids decode to w00 … w36."""
    model = tiny_model("gpt_neox", seed)
    model.tokenizer = build_word_tokenizer(WORDS)
    assert len(model.tokenizer) == VOCAB
    return model


def planted_dictionary(model, width: int = 6) -> SAE:
    """An SAE on ``embed`` whose feature i (for i in PLANTED) is relu(x · w_i + b_i) > 0 exactly when x is
    the embedding of token PLANTED[i]; the other features never fire (bias -100)."""
    emb = model.hf.get_input_embeddings().weight
    with torch.no_grad():
        for token in PLANTED.values():
            emb[token] *= 3.0  # a longer vector, so its own direction separates it from every other token
    d = emb.shape[1]
    W_enc = torch.zeros(width, d)
    b_enc = torch.full((width,), -100.0)
    for feat, token in PLANTED.items():
        w = emb[token].detach() / emb[token].detach().norm()
        scores = emb.detach() @ w
        others = torch.cat([scores[:token], scores[token + 1:]]).max()
        assert scores[token] > others + 0.1
        W_enc[feat], b_enc[feat] = w, -(scores[token] + others) / 2
    g = torch.Generator().manual_seed(1)
    sae = SAE(W_enc, b_enc, torch.randn(d, width, generator=g), torch.zeros(d))
    return sae.with_source("memory", "planted")


def random_sequences(n: int, seed: int = 0, lo: int = 4, hi: int = 30) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g)
    return [torch.randint(len(SPECIAL), VOCAB, (int(t),), generator=g).tolist() for t in lengths]


def all_firings(model, dictionaries: dict, rows: list[list[int]], left: int, right: int) -> dict:
    """submodule → feature → list of (activation, token window) over every firing token of ``rows``, from
    plain forward hooks and dense encodes (no streaming)."""
    out: dict = {name: {} for name in dictionaries}
    subs = model.select(list(dictionaries))
    store: dict = {}
    handles = [model.module(s).register_forward_hook(
        lambda mod, a, o, s=s: store.__setitem__(s.name, (o[0] if isinstance(o, tuple) else o).detach()))
        for s in subs]
    for row in rows:
        with torch.no_grad():
            model.hf(input_ids=torch.tensor([row]))
        for name, ae in dictionaries.items():
            with torch.no_grad():
                f = ae.encode(store[name][0])
            for t, feat in (f > 0).nonzero().tolist():
                window = tuple([-1] * max(0, left - t) + row[max(0, t - left):t + right + 1]
                               + [-1] * max(0, t + right + 1 - len(row)))
                out[name].setdefault(feat, []).append((float(f[t, feat]), window))
    for h in handles:
        h.remove()
    return out


def brute_top(firings: list, k: int) -> list:
    """The k strongest firings with distinct windows (each window at its strongest)."""
    best: dict = {}
    for value, window in firings:
        if window not in best or value > best[window]:
            best[window] = value
    return sorted(((v, w) for w, v in best.items()), key=lambda x: -x[0])[:k]
