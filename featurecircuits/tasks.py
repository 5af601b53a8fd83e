"""Task data: IOI and subject-verb agreement pairs, one JSONL format, loaders that validate.

Every line holds ``clean_prefix``, ``patch_prefix``, ``clean_answer``, ``patch_answer`` (the Sparse
Feature Circuits fields) plus optional metadata (``template``/``variant``). Answers carry their leading
space (``" Alice"``) and must be single tokens; clean and patch must have equal token lengths.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .data import Batch, make_batch
from .fileio import atomic_write_text
from .registry import SVA_VARIANTS, TASK_NAMES
from .words import ORGANISM_WORDS, WORD_LISTS, WordLists, heldout_name_pairs, heldout_noun_pairs, restrict

log = logging.getLogger(__name__)

__all__ = ["FIELDS", "IOI_TEMPLATES", "SVA_VARIANTS", "TASK_NAMES", "WORD_LISTS", "Task", "as_batches", "load_task",
           "make_ioi", "make_sva", "make_task", "n_distinct", "save_task", "sva_example", "sva_prefix", "validate"]

FIELDS = ("clean_prefix", "patch_prefix", "clean_answer", "patch_answer")

IOI_TEMPLATES = {  # the RelP paper's three templates; the prompt ends before the final name
    "then": "Then, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to",
    "when": "When, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to",
    "after": "After {B} and {A} went to the {PLACE}, {B} gave a {OBJECT} to",
}



def ioi_example(template: str, a: str, b: str, place: str, obj: str) -> dict:
    """A clean/patch pair: the patch swaps subject and indirect object everywhere."""
    t = IOI_TEMPLATES[template]
    return {
        "clean_prefix": t.format(A=a, B=b, PLACE=place, OBJECT=obj),
        "patch_prefix": t.format(A=b, B=a, PLACE=place, OBJECT=obj),
        "clean_answer": f" {a}", "patch_answer": f" {b}", "template": template,
    }


def make_ioi(n: int = 100, *, seed: int = 0, words: WordLists = ORGANISM_WORDS,
             name_pairs: Sequence[tuple[str, str]] | None = None,
             templates: Sequence[str] = tuple(IOI_TEMPLATES)) -> list[dict]:
    """``n`` distinct IOI pairs cycling through ``templates``; (A, B) drawn from ``name_pairs`` when given.
    Repeats are redrawn (drawing without replacement), so ``n`` may not exceed the distinct pairs there are."""
    rng = random.Random(seed)
    unknown = [t for t in templates if t not in IOI_TEMPLATES]
    if unknown:
        raise ValueError(f"unknown IOI template(s) {unknown}; valid: {', '.join(IOI_TEMPLATES)}")
    _check_count(n, -(-n // len(templates)) > _ioi_space(words, name_pairs),
                 _ioi_space(words, name_pairs) * len(templates), "IOI")
    out: list[dict] = []
    seen: set[tuple] = set()
    while len(out) < n:
        if name_pairs:
            a, b = rng.choice(list(name_pairs))
            if rng.random() < 0.5:
                a, b = b, a
        else:
            a, b = rng.sample(words.names, 2)
        ex = ioi_example(templates[len(out) % len(templates)], a, b, rng.choice(words.places),
                         rng.choice(words.objects))
        if _pair_key(ex) not in seen:
            seen.add(_pair_key(ex))
            out.append(ex)
    return out


def _ioi_space(words: WordLists, name_pairs) -> int:
    """Distinct IOI pairs per template."""
    ordered = 2 * len(set(name_pairs)) if name_pairs else len(words.names) * (len(words.names) - 1)
    return ordered * len(words.places) * len(words.objects)


def _sva_space(variant: str, words: WordLists, noun_pairs) -> int:
    others = words.attractors if variant == "pp" else words.nouns
    combos = len(set(noun_pairs)) if noun_pairs and variant != "simple" else \
        len(words.nouns) * (len(others) - (variant != "pp"))
    if variant == "simple":
        return len(words.nouns) * 2 * len(words.main_verbs)
    if variant == "pp":
        return combos * 4 * len(words.preps) * len(words.main_verbs)
    if variant == "rc":
        return combos * 4 * len(words.rc_verbs) * len(words.main_verbs)
    return combos * 4 * len(words.rc_verbs)  # within_rc: the main verb is not part of the prompt


def _check_count(n, too_many: bool, space: int, what: str) -> None:
    from .errors import UsageError

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"the number of pairs must be a positive integer, got {n!r}")
    if too_many:
        raise UsageError(f"{what} has only {space} distinct pairs with these word lists; asked for {n} "
                         f"(ask for at most {space})")


def sva_prefix(variant: str, subject: str, other: str = "", *, prep: str = "near", rc_verb: str = "likes") -> str:
    """The words before the verb that must agree, from already inflected words (shared with the corpus)."""
    if variant == "simple":
        return f"The {subject}"
    if variant == "pp":
        return f"The {subject} {prep} the {other}"
    if variant == "rc":
        return f"The {subject} that the {other} {rc_verb}"
    return f"The {subject} that the {other}"  # within_rc


def sva_example(variant: str, subject: tuple[str, str], plural: bool, *, other: tuple[str, str] | None = None,
                other_plural: bool = False, prep: str = "near", rc_verb: tuple[str, str] = ("likes", "like"),
                main_verb: tuple[str, str] = ("is", "are")) -> dict:
    """A clean/patch pair differing only in the number of the noun the answer must agree with.

    ``other`` is the attractor (pp) or the relative clause's subject (rc, within_rc).
    """
    def inflect(pair, pl):  # (singular, plural) nouns and (3rd singular, plural) verbs alike
        return pair[1] if pl else pair[0]

    def prefix(pl: bool, other_pl: bool) -> str:
        return sva_prefix(variant, inflect(subject, pl), inflect(other, other_pl) if other else "", prep=prep,
                          rc_verb=inflect(rc_verb, other_pl))

    if variant not in SVA_VARIANTS:
        raise ValueError(f"unknown agreement variant {variant!r}; valid: {', '.join(SVA_VARIANTS)}")
    if variant != "simple" and other is None:
        raise ValueError(f"variant {variant!r} needs a second noun")
    if variant == "within_rc":  # the answer agrees with the relative clause's subject
        clean, patch = prefix(plural, other_plural), prefix(plural, not other_plural)
        ans, pans = inflect(rc_verb, other_plural), inflect(rc_verb, not other_plural)
    else:
        clean, patch = prefix(plural, other_plural), prefix(not plural, other_plural)
        ans, pans = inflect(main_verb, plural), inflect(main_verb, not plural)
    return {"clean_prefix": clean, "patch_prefix": patch, "clean_answer": f" {ans}",
            "patch_answer": f" {pans}", "variant": variant}


def make_sva(variant: str, n: int = 100, *, seed: int = 0, words: WordLists = ORGANISM_WORDS,
             noun_pairs: Sequence[tuple[int, int]] | None = None) -> list[dict]:
    """``n`` distinct agreement pairs; ``noun_pairs`` (indices into subject nouns × second nouns) restricts
    which combinations are drawn (used to keep evaluation pairs out of training). Repeats are redrawn, so
    ``n`` may not exceed the distinct pairs there are."""
    if variant not in SVA_VARIANTS:
        raise ValueError(f"unknown agreement variant {variant!r}; valid: {', '.join(SVA_VARIANTS)}")
    space = _sva_space(variant, words, noun_pairs)
    _check_count(n, n > space, space, f"agreement ({variant})")
    rng = random.Random(seed)
    out: list[dict] = []
    seen: set[tuple] = set()
    while len(out) < n:
        others = words.attractors if variant == "pp" else words.nouns
        if noun_pairs and variant != "simple":
            si, oi = rng.choice(list(noun_pairs))
        else:
            si = rng.randrange(len(words.nouns))
            oi = rng.choice([i for i in range(len(others)) if variant == "pp" or i != si])
        ex = sva_example(
            variant, words.nouns[si], rng.random() < 0.5,
            other=None if variant == "simple" else others[oi % len(others)], other_plural=rng.random() < 0.5,
            prep=rng.choice(words.preps), rc_verb=rng.choice(words.rc_verbs), main_verb=rng.choice(words.main_verbs),
        )
        if _pair_key(ex) not in seen:
            seen.add(_pair_key(ex))
            out.append(ex)
    return out


def _word_lists(words: str | WordLists, tokenizer) -> tuple[WordLists, bool]:
    """(the word lists, restricted to single tokens of ``tokenizer`` when given; whether held out)."""
    held_out = words == "organism"
    if isinstance(words, str):
        if words not in WORD_LISTS:
            raise ValueError(f"unknown word list {words!r}; valid: {', '.join(WORD_LISTS)}")
        words = WORD_LISTS[words]
    return (words if tokenizer is None else restrict(words, tokenizer)), held_out


def make_task(name: str, n: int = 100, *, seed: int = 0, words: str | WordLists = "organism",
              tokenizer=None) -> list[dict]:
    """Generate ``n`` distinct pairs of a task by name (``ioi``, ``sva-simple``, ``sva-pp``, ``sva-rc``,
    ``sva-within-rc``); :func:`n_distinct` says how many there are.

    With the organism's words, the held-out name and noun combinations (never seen in training) are used.
    With a ``tokenizer``, only words that are single tokens for it are drawn.
    """
    words, held_out = _word_lists(words, tokenizer)
    if name == "ioi":
        return make_ioi(n, seed=seed, words=words, name_pairs=heldout_name_pairs() if held_out else None)
    if name.startswith("sva-") and name[4:].replace("-", "_") in SVA_VARIANTS:
        variant = name[4:].replace("-", "_")
        return make_sva(variant, n, seed=seed, words=words,
                        noun_pairs=heldout_noun_pairs(variant) if held_out else None)
    raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASK_NAMES)}")


def n_distinct(name: str, words: str | WordLists = "organism", *, tokenizer=None) -> int:
    """How many distinct pairs :func:`make_task` can generate for a task name and word list."""
    words, held_out = _word_lists(words, tokenizer)
    if name == "ioi":
        return _ioi_space(words, heldout_name_pairs() if held_out else None) * len(IOI_TEMPLATES)
    if name.startswith("sva-") and name[4:].replace("-", "_") in SVA_VARIANTS:
        variant = name[4:].replace("-", "_")
        return _sva_space(variant, words, heldout_noun_pairs(variant) if held_out else None)
    raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASK_NAMES)}")


# --------------------------------------------------------------------------------------------------
# Files


def save_task(examples: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in examples))
    return path


@dataclass
class Task:
    """Validated task examples, grouped into equal-length batches on demand."""

    name: str
    examples: list[dict]
    counts: dict[str, int] = field(default_factory=dict)  # examples per template/variant
    source: dict = field(default_factory=dict)  # how to get the examples again: {"file": ...} or generator args

    def __len__(self) -> int:
        return len(self.examples)

    def batches(self, tokenizer, batch_size: int = 32, *, n: int | None = None) -> list[Batch]:
        """Batches of at most ``batch_size``, each of one token length (templates can differ), from the first
        ``n`` examples (all when None)."""
        check_count("batch_size", batch_size)
        if n is not None:
            check_count("n_examples", n)
        groups: dict[int, list[dict]] = defaultdict(list)
        for ex in self.examples[:n]:
            groups[len(tokenizer.encode(ex["clean_prefix"]))].append(ex)
        out = []
        for length in sorted(groups):
            g = groups[length]
            for i in range(0, len(g), batch_size):
                chunk = g[i:i + batch_size]
                out.append(make_batch(tokenizer, *[[e[f] for e in chunk] for f in FIELDS]))
        return out


def load_task(path: str | Path, tokenizer=None, *, name: str | None = None) -> Task:
    """Read a JSONL task, each line checked against :class:`featurecircuits.schemas.TaskLine` (errors name the
    file and line); with a tokenizer, also check single-token answers and equal lengths per pair. Repeated
    pairs are logged as a warning."""
    from .errors import UsageError
    from .schemas import parse_json, read_text, validate_task_line

    path = Path(path)
    text = read_text(path, "task file")
    examples = []
    # lines end at "\n" only (str.splitlines would also split at U+2028 and others, which JSON strings may hold)
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        examples.append(validate_task_line(parse_json(line, where), where))
    if not examples:
        raise UsageError(f"task file {path} holds no examples (expected one JSON object per line with "
                         f"{', '.join(FIELDS)})")
    task = Task(name or path.stem, examples,
                dict(Counter(e.get("template") or e.get("variant") or "all" for e in examples)), {"file": str(path)})
    warn_duplicates(task, str(path))
    if tokenizer is not None:
        validate(task, tokenizer, source=str(path))
    return task


def _pair_key(ex: dict) -> tuple:
    return tuple(ex[f] for f in FIELDS)


def warn_duplicates(task: Task, source: str) -> int:
    """Log a warning when pairs repeat (they weigh double in every mean); returns the number of repeats."""
    seen = Counter(_pair_key(e) for e in task.examples)
    repeats = sum(c - 1 for c in seen.values())
    if repeats:
        log.warning("%s: %d of %d pairs repeat an earlier pair (%d distinct); repeated pairs weigh more in every "
                    "mean", source, repeats, len(task.examples), len(seen))
    return repeats


def validate(task: Task, tokenizer, *, source: str = "task", context: int | None = None) -> None:
    """Check every pair against the tokenizer, before any work: words in the vocabulary, clean and patch of
    one token length and not the same tokens, single-token answers that are not the same token, and (with
    ``context``, the model's context length) prompts that fit. Errors name the example and show the tokens."""
    unk = getattr(tokenizer, "unk_token_id", None)
    for i, ex in enumerate(task.examples, 1):
        c, p = tokenizer.encode(ex["clean_prefix"]), tokenizer.encode(ex["patch_prefix"])
        if unk is not None and (unk in c or unk in p):
            raise ValueError(f"{source} example {i}: a word of {ex['clean_prefix']!r} / {ex['patch_prefix']!r} is "
                             "not in the tokenizer's vocabulary")
        if len(c) != len(p):
            raise ValueError(f"{source} example {i}: clean prefix has {len(c)} tokens "
                             f"({ex['clean_prefix']!r}) but patch prefix has {len(p)} ({ex['patch_prefix']!r})")
        if c == p:
            raise ValueError(f"{source} example {i}: clean_prefix {ex['clean_prefix']!r} and patch_prefix "
                             f"{ex['patch_prefix']!r} are the same tokens ({tokenizer.convert_ids_to_tokens(c)}); "
                             "patching would change nothing")
        if context is not None and len(c) > context:
            raise ValueError(f"{source} example {i}: the prompts have {len(c)} tokens, more than the model's context "
                             f"of {context} tokens; shorten them")
        _check_answers(tokenizer, ex, f"{source} example {i}")


def _check_answers(tokenizer, ex: dict, where: str) -> None:
    """Both answers single tokens, and not the same one (the logit difference would be 0)."""
    from .data import single_token

    ids = []
    for f in ("clean_answer", "patch_answer"):
        try:
            ids.append(single_token(tokenizer, ex[f]))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    if ids[0] == ids[1]:
        raise ValueError(f"{where}: clean_answer {ex['clean_answer']!r} and patch_answer {ex['patch_answer']!r} are "
                         f"the same token ({tokenizer.convert_ids_to_tokens(ids[:1])[0]!r}, id {ids[0]}); the metric, "
                         "their logit difference, would be 0")


def check_count(name: str, value) -> None:
    """A count given to the API (examples, batch size): a positive integer."""
    from .errors import UsageError

    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")


def as_batches(task, tokenizer, *, n_examples: int | None = None, batch_size: int = 32) -> list[Batch]:
    """A Task, a JSONL path, a Batch or a list of Batches as equal-length batches (the first ``n_examples``
    examples of a task, at most ``batch_size`` per batch)."""
    check_count("batch_size", batch_size)
    if n_examples is not None:
        check_count("n_examples", n_examples)
    if isinstance(task, Batch):
        return [task]
    if isinstance(task, (str, Path)):
        task = load_task(task, tokenizer)
    if isinstance(task, Task):
        if tokenizer is None:
            raise ValueError("the model has no tokenizer; pass Batches instead of a task")
        return task.batches(tokenizer, batch_size, n=n_examples)
    batches = list(task)
    if not batches or not all(isinstance(b, Batch) for b in batches):
        raise ValueError("task must be a Task, a JSONL path, a Batch or a list of Batches")
    return batches
