"""Word lists the task generators draw from, and the organism's held-out combinations. Torch-free.

Which list suits a model is decided by its tokenizer (:func:`words_for`): the first list whose every word
is a single token for it.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, fields
from functools import cache


@dataclass(frozen=True)
class WordLists:
    """Words the generators draw from; every one must be a single token for the target tokenizer."""

    names: tuple[str, ...]
    places: tuple[str, ...]
    objects: tuple[str, ...]
    nouns: tuple[tuple[str, str], ...]  # (singular, plural) subjects
    attractors: tuple[tuple[str, str], ...]  # (singular, plural) nouns inside prepositional phrases
    preps: tuple[str, ...]
    rc_verbs: tuple[tuple[str, str], ...]  # (agrees with singular, agrees with plural): likes/like
    main_verbs: tuple[tuple[str, str], ...]  # is/are, was/were


ORGANISM_WORDS = WordLists(
    names=("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack", "Kate",
           "Leo", "Mary", "Nick", "Olivia", "Paul"),
    places=("store", "park", "school", "office", "garden", "beach", "library", "market"),
    objects=("book", "ball", "gift", "drink", "key", "letter", "pen", "cake"),
    nouns=(("athlete", "athletes"), ("manager", "managers"), ("secretary", "secretaries"),
           ("doctor", "doctors"), ("author", "authors"), ("farmer", "farmers"), ("pilot", "pilots"),
           ("teacher", "teachers"), ("senator", "senators"), ("dancer", "dancers")),
    attractors=(("car", "cars"), ("desk", "desks"), ("tree", "trees"), ("house", "houses")),
    preps=("near", "behind", "beside"),
    rc_verbs=(("likes", "like"), ("knows", "know"), ("sees", "see"), ("hates", "hate"), ("admires", "admire")),
    main_verbs=(("is", "are"), ("was", "were")),
)

# Words that are single tokens for the GPT-NeoX (Pythia) tokenizer with a leading space.
PYTHIA_WORDS = WordLists(
    names=("John", "Mary", "Tom", "James", "Dan", "Sarah", "Paul", "Mark", "Anna", "Mike", "Lisa", "David"),
    places=("store", "park", "school", "office", "garden", "beach", "house", "station"),
    objects=("book", "ball", "gift", "drink", "key", "letter", "ring", "bag"),
    nouns=(("doctor", "doctors"), ("teacher", "teachers"), ("farmer", "farmers"), ("pilot", "pilots"),
           ("writer", "writers"), ("manager", "managers"), ("student", "students"), ("officer", "officers")),
    attractors=(("car", "cars"), ("desk", "desks"), ("tree", "trees"), ("door", "doors")),
    preps=("near", "behind"),
    rc_verbs=(("likes", "like"), ("knows", "know"), ("sees", "see"), ("hates", "hate")),
    main_verbs=(("is", "are"), ("was", "were")),
)

WORD_LISTS = {"organism": ORGANISM_WORDS, "pythia": PYTHIA_WORDS}


_SPLIT_SEED = 20241124


@cache
def heldout_name_pairs() -> tuple[tuple[str, str], ...]:
    """One unordered name pair in five: never together in a training story."""
    pairs = list(itertools.combinations(ORGANISM_WORDS.names, 2))
    random.Random(_SPLIT_SEED).shuffle(pairs)
    return tuple(sorted(pairs[: len(pairs) // 5]))


@cache
def heldout_noun_pairs(variant: str) -> tuple[tuple[int, int], ...]:
    """One (subject, second noun) index combination in five, per variant family (pp vs relative clauses)."""
    if variant == "pp":
        combos = [(s, a) for s in range(len(ORGANISM_WORDS.nouns)) for a in range(len(ORGANISM_WORDS.attractors))]
    else:
        combos = [(s, o) for s in range(len(ORGANISM_WORDS.nouns)) for o in range(len(ORGANISM_WORDS.nouns)) if s != o]
    random.Random(_SPLIT_SEED + (variant == "pp")).shuffle(combos)
    return tuple(sorted(combos[: len(combos) // 5]))


def all_words(words: WordLists) -> list[str]:
    out: list[str] = []
    for f in fields(words):
        for item in getattr(words, f.name):
            out += list(item) if isinstance(item, tuple) else [item]
    return out


def single_token(word: str, tokenizer) -> bool:
    """Whether `` word`` (with its leading space) is one known token for ``tokenizer``."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = tokenizer.encode(f" {word}", add_special_tokens=False)
    return len(ids) == 1 and (unk is None or ids[0] != unk)


def restrict(words: WordLists, tokenizer) -> WordLists:
    """The word lists without entries that are not single tokens for ``tokenizer`` (a pair goes when
    either of its words does); an error when too few remain to make pairs."""
    kept = {}
    for f in fields(words):
        items = getattr(words, f.name)
        kept[f.name] = tuple(it for it in items if all(single_token(w, tokenizer) for w in
                                                      (it if isinstance(it, tuple) else (it,))))
        needed = 2 if f.name in ("names", "nouns") else 1
        if len(kept[f.name]) < needed:
            raise ValueError(f"too few {f.name} are single tokens for this tokenizer ({len(kept[f.name])} of "
                             f"{len(items)}); pass a task file instead of a task name")
    return WordLists(**kept)


def coverage(words: WordLists, tokenizer) -> float:
    """The fraction of words that are single tokens for ``tokenizer``."""
    ws = all_words(words)
    return sum(single_token(w, tokenizer) for w in ws) / len(ws)


def words_for(tokenizer) -> str:
    """The name of the word list that suits ``tokenizer``: the first whose words are all single tokens,
    else the one with the most (generators then draw only from those, see :func:`restrict`)."""
    best = max(WORD_LISTS, key=lambda name: (coverage(WORD_LISTS[name], tokenizer), -list(WORD_LISTS).index(name)))
    restrict(WORD_LISTS[best], tokenizer)  # raises when too few are left
    return best
