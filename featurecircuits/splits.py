"""Discovery and evaluation pairs: every task's pairs fall in one of two disjoint splits, so that a circuit is
evaluated on pairs other than those that found it.

A pair's split is its task line's ``split`` field (``discovery`` or ``evaluation``) where the file gives one,
else fixed by a hash of its four fields with :data:`SPLIT_SEED`: a pair is in ``evaluation`` when that hash,
read as a fraction, is below :data:`EVALUATION_FRACTION` (one half). The split of a pair never depends on
which other pairs a task holds, their order, or how many are asked for. Generated tasks draw pairs until
enough of the asked-for split are found. ``all`` takes every pair (then an evaluation is in-sample).

Circuits record which pairs found them (:func:`pair_id` of each); evaluations and curves warn, at the default
log level, with "in-sample" when their pairs include any of those.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter

from .registry import SPLITS
from .tasks import FIELDS, Task, make_task, n_distinct

log = logging.getLogger(__name__)

SPLIT_SEED = 0
EVALUATION_FRACTION = 0.5


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")


def pair_id(example: dict) -> str:
    """A short, stable id of a pair (its four fields)."""
    return hashlib.sha256("\x1f".join(example[f] for f in FIELDS).encode()).hexdigest()[:12]


def split_of(example: dict) -> str:
    """``discovery`` or ``evaluation``: the line's own ``split`` field, else by the seeded hash of the pair."""
    if example.get("split") in SPLITS[:2]:
        return example["split"]
    digest = hashlib.sha256(f"{SPLIT_SEED}\x1e{pair_id(example)}".encode()).digest()
    return "evaluation" if int.from_bytes(digest[:8], "big") / 2**64 < EVALUATION_FRACTION else "discovery"


def select(task: Task, split: str) -> Task:
    """The task's pairs of one split (``all``: the task itself)."""
    check_split(split)
    if split == "all":
        return task
    examples = [e for e in task.examples if split_of(e) == split]
    if not examples:
        raise ValueError(f"task {task.name!r} has no pairs in its {split} split ({len(task)} pairs in all); give "
                         "more pairs, mark some lines with \"split\": \"{split}\", or use split 'all'")
    counts = dict(Counter(e.get("template") or e.get("variant") or "all" for e in examples))
    return Task(task.name, examples, counts, {**task.source, "split": split})


def generate(name: str, n: int, *, split: str = "all", seed: int = 0, words="organism", tokenizer=None) -> Task:
    """``n`` distinct generated pairs of one split (all there are when the split has fewer: check ``len``)."""
    check_split(split)
    space = n_distinct(name, words, tokenizer=tokenizer)
    want = min(n, space)
    drawn = want if split == "all" else min(space, 2 * want + 16)
    while True:
        examples = [e for e in make_task(name, drawn, seed=seed, words=words, tokenizer=tokenizer)
                    if split == "all" or split_of(e) == split]
        if len(examples) >= want or drawn == space:
            break
        drawn = min(space, 2 * drawn)
    source = {"generator": name, "n": n, "seed": seed, "words": words if isinstance(words, str) else "custom",
              "split": split}
    return Task(name, examples[:n], dict(Counter(e.get("template") or e.get("variant") or "all"
                                                 for e in examples[:n])), source)


def record(task: Task, n: int | None, split: str) -> dict:
    """What a circuit records of the pairs that found it."""
    used = task.examples[:n]
    return {"split": split, "n": len(used), "pairs": [pair_id(e) for e in used]}


def warn_in_sample(found_on: dict | None, task: Task, n: int | None, what: str) -> float:
    """Warn (``in-sample``) when ``task``'s first ``n`` pairs include pairs that found the circuit; returns the
    fraction of them that did (0 when the circuit does not record its pairs)."""
    if not found_on or not found_on.get("pairs"):
        return 0.0
    used = [pair_id(e) for e in task.examples[:n]]
    shared = len(set(used) & set(found_on["pairs"]))
    if shared:
        log.warning("%s is in-sample: %d of its %d pairs found the circuit (their %s split); pass split "
                    "'evaluation' (--split evaluation) to measure on held-out pairs", what, shared, len(used),
                    found_on.get("split", "?"))
    return shared / max(1, len(used))


def task_split(task, tokenizer, split: str) -> tuple[object, str | None]:
    """(the pairs to use, the split they are): a Task (or a JSONL path) narrowed to ``split``; batches given
    directly are used as they are (split None)."""
    from pathlib import Path

    from .tasks import load_task

    check_split(split)
    if isinstance(task, (str, Path)):
        task = load_task(task, tokenizer)
    return (select(task, split), split) if isinstance(task, Task) else (task, None)
