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

`special_words` chooses whether the tokenizer's special tokens are local words too:
- "none" (cmgl): only the words of the text;
- "cls": [CLS], then the words: GLoRIA's training slots (its local loss takes
  `words_emb[i, :, :cap_len]`, cap_len = words + 1, so slot 0, [CLS], is the first local word);
- "sep": the words, then [SEP]: GLoRIA's zero-shot slots (`get_local_similarities` takes slots
  1..cap_len, skipping [CLS], so [SEP] is the last local word);
- "cls_sep": [CLS], the words, [SEP]: GLoRIA's whole aggregated word tensor.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

from cmgl_dist.data.negation import denied_word_flags

_WORD_CHARACTER = re.compile(r"\w")


SPECIAL_WORDS = ("none", "cls", "sep", "cls_sep")


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int, special_words: str = "none") -> dict:
    """Tokenize a batch of texts, padded to the longest one (at most `max_length` tokens).

    Returns input_ids, attention_mask, word_ids (long [B, L]: the index of the word each
    token belongs to, -1 for special tokens, punctuation and padding), word_mask (bool
    [B, W], W = most words in the batch, at least 1), word_denied (bool [B, W]: the word lies in
    a negation scope of its text, `cmgl_dist.data.negation`; special words never do) and words
    (list of word strings per text).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer: word ids need one; "
            "load it with AutoTokenizer.from_pretrained(..., use_fast=True)")
    if special_words not in SPECIAL_WORDS:
        raise ValueError(f"special_words={special_words!r} is not one of {SPECIAL_WORDS} (data.special_words)")
    texts = list(texts)
    if not texts:
        raise ValueError("tokenize_texts needs at least one text")
    encoding = tokenizer(
        texts, padding="longest", truncation=True, max_length=max_length,
        return_offsets_mapping=True, return_tensors="pt")

    word_ids = torch.full_like(encoding["input_ids"], -1)
    words: list[list[str]] = []
    denied: list[list[bool]] = []
    for row, text in enumerate(texts):
        row_words, spans = _assign_words(text, encoding.word_ids(row), encoding["offset_mapping"][row].tolist(),
                                         word_ids[row])
        row_denied = denied_word_flags(text, spans)
        if special_words != "none":
            row_denied = [False] * ("cls" in special_words) + row_denied + [False] * ("sep" in special_words)
            row_words = _add_special_words(row_words, encoding["input_ids"][row], word_ids[row], tokenizer,
                                           with_cls="cls" in special_words, with_sep="sep" in special_words)
        words.append(row_words)
        denied.append(row_denied)

    most_words = max(1, max(len(row_words) for row_words in words))
    counts = torch.tensor([len(row_words) for row_words in words])
    word_mask = torch.arange(most_words)[None, :] < counts[:, None]
    word_denied = torch.zeros_like(word_mask)
    for row, row_denied in enumerate(denied):
        word_denied[row, :len(row_denied)] = torch.tensor(row_denied, dtype=torch.bool)
    return {
        "input_ids": encoding["input_ids"],
        "attention_mask": encoding["attention_mask"],
        "word_ids": word_ids,
        "word_mask": word_mask,
        "word_denied": word_denied,
        "words": words,
    }


def _assign_words(text: str, token_words: list, offsets: list,
                  row_word_ids: torch.Tensor) -> tuple[list[str], list[tuple[int, int]]]:
    """Fill `row_word_ids` in place with consecutive word indices; return the word strings and
    their character spans in `text`."""
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
    return [text[spans[word][0]:spans[word][1]] for word in kept], [tuple(spans[word]) for word in kept]


def _add_special_words(words: list[str], input_ids: torch.Tensor, row_word_ids: torch.Tensor, tokenizer,
                       with_cls: bool, with_sep: bool) -> list[str]:
    """Make [CLS] (first) and/or [SEP] (last) words of their own, in place; return the word strings."""
    if with_cls:
        row_word_ids[row_word_ids >= 0] += 1
        row_word_ids[input_ids == tokenizer.cls_token_id] = 0
        words = [tokenizer.cls_token, *words]
    if with_sep:
        row_word_ids[input_ids == tokenizer.sep_token_id] = len(words)
        words = [*words, tokenizer.sep_token]
    return words
