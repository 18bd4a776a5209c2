"""The one text path: report text -> token ids plus a sub-word -> word map.

Used for training batches and for zero-shot prompts alike, so both see identical words.

Words are the units of the tokenizer's own pre-tokenizer (a fast tokenizer's `word_ids()`):
for BERT, whitespace- and punctuation-split pieces, so 'cardiomegaly' (several '##' pieces)
is one word, as in GLoRIA's merge of '##' pieces. Punctuation is treated as GLoRIA treats it:
GLoRIA keeps only `\\w+` runs of a report (nltk RegexpTokenizer) before BERT sees it, so its
words never include punctuation. Here the text reaches the encoder unchanged (punctuation
stays as context), but a pre-tokenizer word without any `\\w` character is not a word: its
tokens get word id -1, like [CLS], [SEP] and padding, and the local loss never aligns it.

Truncation at `max_length` keeps the map consistent: a word cut mid-way keeps the pieces
that fit, and its string in `words` is the part of the text those pieces cover.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

_WORD_CHARACTER = re.compile(r"\w")


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int) -> dict:
    """Tokenize a batch of texts, padded to the longest one (at most `max_length` tokens).

    Returns input_ids, attention_mask, word_ids (long [B, L]: the index of the word each
    token belongs to, -1 for special tokens, punctuation and padding), word_mask (bool
    [B, W], W = most words in the batch, at least 1) and words (list of word strings per text).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer: word ids need one; "
            "load it with AutoTokenizer.from_pretrained(..., use_fast=True)")
    texts = list(texts)
    if not texts:
        raise ValueError("tokenize_texts needs at least one text")
    encoding = tokenizer(
        texts, padding="longest", truncation=True, max_length=max_length,
        return_offsets_mapping=True, return_tensors="pt")

    word_ids = torch.full_like(encoding["input_ids"], -1)
    words: list[list[str]] = []
    for row, text in enumerate(texts):
        row_words = _assign_words(text, encoding.word_ids(row), encoding["offset_mapping"][row].tolist(),
                                  word_ids[row])
        words.append(row_words)

    most_words = max(1, max(len(row_words) for row_words in words))
    counts = torch.tensor([len(row_words) for row_words in words])
    word_mask = torch.arange(most_words)[None, :] < counts[:, None]
    return {
        "input_ids": encoding["input_ids"],
        "attention_mask": encoding["attention_mask"],
        "word_ids": word_ids,
        "word_mask": word_mask,
        "words": words,
    }


def _assign_words(text: str, token_words: list, offsets: list, row_word_ids: torch.Tensor) -> list[str]:
    """Fill `row_word_ids` in place with consecutive word indices; return the word strings."""
    spans: dict[int, list[int]] = {}
    for (start, end), word in zip(offsets, token_words):
        if word is None:
            continue
        if word in spans:
            spans[word][1] = end
        else:
            spans[word] = [start, end]
    kept = [word for word, (start, end) in spans.items() if _WORD_CHARACTER.search(text[start:end])]
    index_of = {word: index for index, word in enumerate(kept)}
    for position, word in enumerate(token_words):
        if word in index_of:
            row_word_ids[position] = index_of[word]
    return [text[spans[word][0]:spans[word][1]] for word in kept]
