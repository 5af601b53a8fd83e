"""The organism's synthetic corpus: IOI stories, agreement sentences and filler, with held-out combinations.

IOI stories vary the connective, the order of the two names, who gives, the verbs and the article, so
the model must find the indirect object from context; the three evaluation templates are among them.
Agreement sentences put attractors (prepositional phrases, relative clauses) between subject and verb.
Name pairs and (subject, second noun) combinations listed by the ``heldout_*`` functions never occur
together in training; evaluation pairs are drawn from them.
"""

from __future__ import annotations

import random

from ..tasks import sva_prefix
from ..words import ORGANISM_WORDS as W
from ..words import heldout_name_pairs, heldout_noun_pairs

ADJECTIVES = ("happy", "tired", "young", "old", "late", "busy")
CONNECTIVES = ("Then,", "When,", "After", "Later,", "")
PUNCT = (",", ".")


def vocabulary() -> list[str]:
    words = set(W.names) | set(W.places) | set(W.objects) | set(W.preps) | set(ADJECTIVES) | set(PUNCT)
    for pairs in (W.nouns, W.attractors, W.rc_verbs, W.main_verbs):
        for a, b in pairs:
            words |= {a, b}
    words |= {"The", "the", "a", "and", "went", "to", "were", "at", "gave", "handed", "that", "on", "likes",
              "Then", "When", "After", "Later", "is"}
    return sorted(words)


def _ioi_story(rng: random.Random) -> str:
    held = set(heldout_name_pairs())
    while True:
        x, y = rng.sample(W.names, 2)
        if tuple(sorted((x, y))) not in held:
            break
    giver, receiver = (x, y) if rng.random() < 0.5 else (y, x)
    conn = rng.choice(CONNECTIVES)
    where = "went to the" if rng.random() < 0.6 else "were at the"
    verb = "gave" if rng.random() < 0.7 else "handed"
    art = "a" if rng.random() < 0.7 else "the"
    place, obj = rng.choice(W.places), rng.choice(W.objects)
    sep = "," if conn == "After" else "."
    head = f"{conn} {x} and {y} {where} {place}{sep}".strip()
    return f"{head} {giver} {verb} {art} {obj} to {receiver}."


def _sva_sentence(rng: random.Random) -> str:
    kind = rng.choice(("simple", "pp", "rc", "transitive"))
    variant = "pp" if kind == "pp" else "rc"
    held = set(heldout_noun_pairs(variant))
    others = W.attractors if kind == "pp" else W.nouns
    while True:
        si, oi = rng.randrange(len(W.nouns)), rng.randrange(len(others))
        if kind == "simple" or ((si, oi) not in held and (kind == "pp" or si != oi)):
            break
    pl, opl = rng.random() < 0.5, rng.random() < 0.5
    subj, other = W.nouns[si][pl], others[oi][opl]
    mv, rv = rng.choice(W.main_verbs)[pl], rng.choice(W.rc_verbs)
    adj = rng.choice(ADJECTIVES)
    if kind == "transitive":
        return f"The {subj} {rv[pl]} the {other}."
    prep = rng.choice(W.preps) if kind == "pp" else ""  # drawn last, as always: the corpus must not change
    return f"{sva_prefix(kind, subj, other, prep=prep, rc_verb=rv[opl])} {mv} {adj}."


def _filler(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return f"The {rng.choice(W.objects)} is on the {rng.choice(W.attractors)[0]}."
    if kind == 1:
        return f"{rng.choice(W.names)} likes the {rng.choice(W.places)}."
    return f"The {rng.choice(W.places)} is {rng.choice(ADJECTIVES)}."


def sentence(rng: random.Random, *, p_ioi: float = 0.45, p_sva: float = 0.4) -> str:
    u = rng.random()
    if u < p_ioi:
        return _ioi_story(rng)
    if u < p_ioi + p_sva:
        return _sva_sentence(rng)
    return _filler(rng)


def document(rng: random.Random, n_tokens: int, tokenizer) -> list[int]:
    """Sentences joined until at least ``n_tokens`` tokens; the first ``n_tokens`` of them."""
    ids: list[int] = []
    while len(ids) < n_tokens:
        ids += tokenizer.encode(sentence(rng))
    return ids[:n_tokens]
