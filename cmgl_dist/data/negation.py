"""Negation scopes in report text: which words a report denies ("No [pleural effusion]").

Most IU-RR mentions of effusion and consolidation are denied, so GLoRIA's local loss, which aligns
every word of a report with the regions of its image, trains those words mostly on images without
the finding. `denied_spans` finds the denied words with a rule set in the style of NegEx (Chapman
et al., 2001) and the CheXpert labeller's negation phrases, so that `loss.denied_words=drop` can
take them out of the word-region loss (`cmgl_dist.losses.cmgl_loss.local_word_mask`).

The rules, on lower-cased `\\w+` tokens and punctuation:
- a *pre-trigger* ("no", "without", "negative for", "free of", "clear of", "no evidence of",
  "resolution of", ...) denies the words after it up to the end of its scope: punctuation that ends
  a clause (. ; : ! ?), a conjunction that turns the sentence ("but", "however", "although",
  "which", "except", ...), a comma or "and" that opens a new clause (followed by "the", "there",
  ...), or a verb that closes the noun phrase ("is", "are", "seen", "identified", ...). Commas
  alone do not end a scope: "No focal consolidation, effusion, or pneumothorax" denies the list;
- a *post-trigger* ("resolved", "absent", "has cleared", or a pre-trigger whose scope is only such
  verbs, as "not" in "pneumothorax is not seen") denies the words of its clause before it, back to
  a clause boundary, less the auxiliary verbs between them;
- a *pseudo-negation* ("no change", "no interval change", "not only", "no increase", "cannot be
  excluded") is no trigger: "No change in the small left effusion" affirms the effusion.
Trigger words themselves are not denied: "no" names no finding.

Measured on 120 hand-labelled IU-RR sentences (tests/data/negation_iurr.txt): see the README.
"""
from __future__ import annotations

import re
from typing import Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")

PRE_TRIGGERS = (
    "no", "not", "without", "negative for", "free of", "clear of", "no evidence of", "no signs of",
    "no sign of", "no evidence for", "without evidence of", "absence of", "resolution of",
    "resolved", "no longer", "no radiographic evidence of", "never", "none", "nor", "neither",
    "rather than", "removal of", "interval removal of", "interval resolution of",
)
POST_TRIGGERS = (
    "resolved", "has resolved", "have resolved", "absent", "is absent", "are absent", "has cleared",
    "have cleared", "cleared", "removed", "has been removed", "have been removed", "no longer seen",
    "no longer visualized", "no longer present", "no longer evident", "not seen", "not identified",
    "not visualized", "not present", "not evident", "not appreciated", "not demonstrated",
    "not detected", "not apparent", "not visible", "not noted",
)
PSEUDO_NEGATIONS = (
    "no change", "no changes", "no interval change", "no significant change", "no significant interval change",
    "no appreciable change", "no substantial change", "no definite change", "no significant changes",
    "no increase", "no decrease", "no significant increase", "no significant decrease", "not only",
    "not changed", "not significantly changed", "without change", "without interval change",
    "without significant change", "cannot be excluded", "not be excluded", "not excluded",
    "not ruled out", "not be ruled out", "cannot be ruled out", "no further", "not well",
    "not necessarily", "not certain", "no other",
)
# Tokens that end a scope (after punctuation): a turn of the sentence.
SCOPE_ENDS = frozenset({
    "but", "however", "although", "though", "whereas", "while", "except", "which", "aside", "apart",
    "otherwise", "yet", "still", "there", "now", "given", "other", "besides",
})
CLAUSE_PUNCTUATION = frozenset(".;:!?()")
# After a comma or "and", these open a new clause rather than continue a denied list.
CLAUSE_OPENERS = frozenset({"the", "there", "this", "these", "heart", "lungs", "mediastinum", "it", "stable"})
# Verbs that close a denied noun phrase ("No effusion [is seen]"); not denied themselves.
PHRASE_VERBS = frozenset({
    "is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "seen", "identified",
    "noted", "present", "demonstrated", "visualized", "visualised", "appreciated", "detected",
    "evident", "apparent", "visible", "shown", "definitely", "clearly", "seen", "appears", "appear",
    "demonstrate", "demonstrates", "suggest", "suggests", "to",
})
MAX_SCOPE = 20  # tokens; NegEx uses 5, IU-RR's denied lists run longer


def _phrases(phrases: Sequence[str]) -> list[tuple[str, ...]]:
    """Longest first, so that "no evidence of" wins over "no"."""
    return sorted((tuple(p.split()) for p in set(phrases)), key=len, reverse=True)


_PRE, _POST, _PSEUDO = _phrases(PRE_TRIGGERS), _phrases(POST_TRIGGERS), _phrases(PSEUDO_NEGATIONS)


def _match(words: list[str], i: int, phrases: list[tuple[str, ...]]) -> int:
    """Length of the longest phrase starting at token i, 0 if none."""
    for phrase in phrases:
        if tuple(words[i:i + len(phrase)]) == phrase:
            return len(phrase)
    return 0


def _ends_scope(words: list[str], j: int) -> bool:
    word = words[j]
    if word in CLAUSE_PUNCTUATION or word in SCOPE_ENDS:
        return True
    if word in (",", "and") and j + 1 < len(words) and words[j + 1] in CLAUSE_OPENERS:
        return True
    return _match(words, j, _PRE) > 0 or _match(words, j, _PSEUDO) > 0


def _forward(words: list[str], start: int) -> list[int]:
    """Token indices of a pre-trigger's scope: from `start` to the first scope end or phrase verb."""
    scope = []
    for j in range(start, min(len(words), start + MAX_SCOPE)):
        if _ends_scope(words, j):
            break
        if words[j] in PHRASE_VERBS:
            if scope:
                break  # "no effusion [is] seen": the verb closes the phrase
            # else "no visible pneumothorax": an adjective opening the phrase
        scope.append(j)
    return scope


def _backward(words: list[str], end: int) -> list[int]:
    """Token indices of a post-trigger's scope: its clause before `end`, less trailing verbs."""
    j = end - 1
    while j >= 0 and words[j] in PHRASE_VERBS | {"not", "no", "longer", "now", "since", "interval", "completely"}:
        j -= 1
    scope = []
    while j >= 0 and len(scope) < MAX_SCOPE and not _ends_scope(words, j) and words[j] != ",":
        scope.append(j)
        j -= 1
    return scope[::-1]


def denied_token_flags(words: list[str]) -> list[bool]:
    """Per lower-cased token: whether a negation scope covers it."""
    denied = [False] * len(words)
    i = 0
    while i < len(words):
        if n := _match(words, i, _PSEUDO):
            i += n
            continue
        post = _match(words, i, _POST)
        pre = _match(words, i, _PRE)
        scope: list[int] = []
        if pre and pre >= post:
            scope = _forward(words, i + pre)
            if not any(words[j][0].isalnum() for j in scope):
                scope = _backward(words, i)
            n = pre
        elif post:
            scope, n = _backward(words, i), post
        else:
            n = 1
        for j in scope:
            if words[j][0].isalnum() or words[j][0] == "_":
                denied[j] = True
        i += n
    return denied


def denied_spans(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the words of `text` inside a negation scope."""
    tokens = list(_TOKEN.finditer(text))
    flags = denied_token_flags([t.group().lower() for t in tokens])
    return [t.span() for t, flag in zip(tokens, flags) if flag]


def denied_word_flags(text: str, word_spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Per word of `text` (given by character span): whether it overlaps a denied token."""
    spans = denied_spans(text)
    return [any(s < end and start < e for s, e in spans) for start, end in word_spans]
