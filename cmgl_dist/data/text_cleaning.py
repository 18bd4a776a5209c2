"""GLoRIA's report cleaning (`data.text_cleaning=gloria`): a report -> its list of training sentences.

GLoRIA builds each study's sentences once (`MultimodalPretrainingDataset.create_path_2_sent_mapping`)
and trains on them rather than on the report: newlines become spaces; the text is split at list
numbers (`[0-9]+\\.`) and then at every '.'; each piece is lower-cased and reduced to its `\\w+`
runs (nltk's RegexpTokenizer), non-ASCII characters dropped; pieces of one word or none are left
out; and the loop stops once the words counted so far equal `captions_per_image` exactly (5 in its
configs: a report whose first sentences hold exactly 5 words keeps only those; one that passes 5
without landing on it keeps every sentence). Training then takes one sentence drawn at random
(`full_report: false`, `data.text_mode=sentence`) or all of them joined by spaces (`full_report:
true`, `data.text_mode=report`).

cmgl's default keeps the packed report as it is: case and punctuation reach the tokenizer, and a
sentence is what ends at '.', '!' or '?' (`samples.report_sentences`).
"""
from __future__ import annotations

import re

_LIST_NUMBER = re.compile(r"[0-9]+\.")
_WORD_RUN = re.compile(r"\w+")  # nltk.tokenize.RegexpTokenizer(r"\w+").tokenize is re.findall


def gloria_sentences(report: str, captions_per_image: int) -> list[str]:
    """The sentences GLoRIA's create_path_2_sent_mapping keeps for one report's text."""
    pieces = [sentence for point in _LIST_NUMBER.split(report.replace("\n", " ")) for sentence in point.split(".")]
    count, sentences = 0, []
    for piece in pieces:
        if len(piece) == 0:
            continue
        tokens = _WORD_RUN.findall(piece.replace("\ufffd\ufffd", " ").lower())
        if len(tokens) <= 1:
            continue
        kept = [t for t in (t.encode("ascii", "ignore").decode("ascii") for t in tokens) if len(t) > 0]
        sentences.append(" ".join(kept))
        count += len(kept)
        if count == captions_per_image:
            break
    return sentences
