"""What each token position of a task's prompts is, for reading a circuit whose nodes keep their positions.

When every pair of a task tokenizes to one length, a position means the same thing in every prompt: the
page heads its column with the clean prompt's token (and the patch prompt's, where they differ: "pilot /
pilots") and, where the answers occur in the prompt, with the role of that token in IOI's terms: ``IO``
(the clean answer, the indirect object), ``S1``, ``S2``, … (the patch answer, the subject, in order of
occurrence) and ``END`` (the last position, where the metric is read). A column's token or role is shown
only where every example agrees; elsewhere the column says which example's token it shows.
"""

from __future__ import annotations

MAX_EXAMPLES = 64  # examples read to decide whether columns agree (enough to see templates vary)


def _roles(clean_ids: list[int], clean_answer: int, patch_answer: int) -> list[str | None]:
    roles: list[str | None] = [None] * len(clean_ids)
    subject = 0
    for k, t in enumerate(clean_ids):
        if t == clean_answer:
            roles[k] = "IO"
        elif t == patch_answer:
            subject += 1
            roles[k] = f"S{subject}"
    roles[-1] = roles[-1] or "END"
    return roles


def _tokens(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def position_labels(tokenizer, examples: list[dict]) -> list[dict] | None:
    """One entry per position (``clean``, ``patch`` where it differs, ``varies`` where examples disagree,
    ``role``) for examples that all tokenize to one length; None when they do not (positions then differ in
    meaning and circuits are summed over them)."""
    from .data import single_token

    rows = []
    for ex in examples[:MAX_EXAMPLES]:
        clean, patch = tokenizer.encode(ex["clean_prefix"]), tokenizer.encode(ex["patch_prefix"])
        answers = (single_token(tokenizer, ex["clean_answer"]), single_token(tokenizer, ex["patch_answer"]))
        rows.append((clean, patch, _roles(clean, *answers)))
    if not rows or len({len(r[0]) for r in rows} | {len(r[1]) for r in rows}) != 1:
        return None
    clean0, patch0, _ = rows[0]
    clean_text, patch_text = _tokens(tokenizer, clean0), _tokens(tokenizer, patch0)
    out = []
    for k in range(len(clean0)):
        roles = {r[2][k] for r in rows}
        out.append({"clean": clean_text[k], "patch": patch_text[k] if patch0[k] != clean0[k] else None,
                    "varies": len({r[0][k] for r in rows}) > 1, "role": roles.pop() if len(roles) == 1 else None})
    return out
