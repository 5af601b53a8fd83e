"""Clean/patch batches and metrics.

A :class:`Batch` holds token ids of clean and patch prompts (equal lengths) and the two answer tokens.
A metric maps ``(logits, batch)`` to one value per example; the default is the logit difference
``logit[clean_answer] - logit[patch_answer]`` at the last position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Metric = Callable[[torch.Tensor, "Batch"], torch.Tensor]


@dataclass(frozen=True)
class Batch:
    clean: torch.Tensor  # (B, T) token ids
    patch: torch.Tensor  # (B, T)
    clean_answer: torch.Tensor  # (B,)
    patch_answer: torch.Tensor  # (B,)

    def __post_init__(self):
        if self.clean.ndim != 2 or self.patch.ndim != 2:
            raise ValueError(f"clean and patch must be (batch, tokens) id tensors, got shapes "
                             f"{tuple(self.clean.shape)} and {tuple(self.patch.shape)}")
        if self.clean.shape != self.patch.shape:
            raise ValueError(f"clean and patch prompts must have the same token length: clean is "
                             f"{tuple(self.clean.shape)}, patch is {tuple(self.patch.shape)}")
        n = self.clean.shape[0]
        for name in ("clean_answer", "patch_answer"):
            t = getattr(self, name)
            if t.shape != (n,):
                raise ValueError(f"{name} must hold one token id per example ({n}), got shape {tuple(t.shape)}")

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.clean.shape[1]

    def repeat(self, k: int) -> Batch:
        """The batch tiled k times (copy-major: example b of copy j is row j*B + b)."""
        return Batch(self.clean.repeat(k, 1), self.patch.repeat(k, 1),
                     self.clean_answer.repeat(k), self.patch_answer.repeat(k))

    def __getitem__(self, idx) -> Batch:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Batch(self.clean[idx], self.patch[idx], self.clean_answer[idx], self.patch_answer[idx])

    def roles(self, direction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(base ids, source ids): the run we intervene on and the run we take activations from —
        (clean, patch) when noising, (patch, clean) when denoising."""
        return (self.clean, self.patch) if direction == "noising" else (self.patch, self.clean)

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.clean, self.patch, self.clean_answer, self.patch_answer)))


def single_token(tokenizer, text: str) -> int:
    """The id of ``text`` if it is exactly one token, else a ValueError that shows the tokens."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(f"answer {text!r} must be a single token but is {len(ids)}: {pieces}")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and ids[0] == unk:
        raise ValueError(f"answer {text!r} is not in the tokenizer's vocabulary (it maps to the unknown token)")
    return ids[0]


def make_batch(
    tokenizer,
    clean: Sequence[str],
    patch: Sequence[str],
    clean_answers: Sequence[str],
    patch_answers: Sequence[str],
) -> Batch:
    """Tokenise prompt pairs into a Batch; every prompt must have the same token length."""
    n = len(clean)
    if not (len(patch) == len(clean_answers) == len(patch_answers) == n) or n == 0:
        raise ValueError(f"need the same positive number of clean prompts ({n}), patch prompts "
                         f"({len(patch)}), clean answers ({len(clean_answers)}) and patch answers "
                         f"({len(patch_answers)})")
    c_ids = [tokenizer.encode(p) for p in clean]
    p_ids = [tokenizer.encode(p) for p in patch]
    for i, (a, b) in enumerate(zip(c_ids, p_ids, strict=True)):
        if len(a) != len(b):
            raise ValueError(f"example {i}: clean prompt {clean[i]!r} has {len(a)} tokens but patch prompt "
                             f"{patch[i]!r} has {len(b)}; pairs must have equal token lengths")
    lengths = sorted({len(a) for a in c_ids})
    if len(lengths) > 1:
        raise ValueError(f"prompts in one batch must share a token length; found lengths {lengths} "
                         "(group examples by length first)")
    return Batch(
        torch.tensor(c_ids), torch.tensor(p_ids),
        torch.tensor([single_token(tokenizer, a) for a in clean_answers]),
        torch.tensor([single_token(tokenizer, a) for a in patch_answers]),
    )


def logit_diff(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``logit[clean_answer] - logit[patch_answer]`` at the last position, per example."""
    last = logits[:, -1, :]
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, batch.clean_answer] - last[rows, batch.patch_answer]


logit_diff.last_positions = 1  # the metric reads only the last position's logits


def logits_kept(metric) -> int:
    """How many final positions' logits ``metric`` reads, as it declares with a ``last_positions``
    attribute (the unembedding is then computed only there); 0, the default, computes every position."""
    n = getattr(metric, "last_positions", 0)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0
