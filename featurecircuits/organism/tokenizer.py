"""A word-level tokenizer: every word and punctuation mark is one token (saved as tokenizer.json)."""

from __future__ import annotations

from collections.abc import Iterable

SPECIAL = ("<pad>", "<eos>", "<unk>")


def build_word_tokenizer(words: Iterable[str]):
    """A ``PreTrainedTokenizerFast`` over ``words`` (plus specials) that splits on spaces and punctuation,
    so ``" Alice"`` is one token and ``"store."`` is two."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for w in sorted(set(words)):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")
