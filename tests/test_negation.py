"""Negation scopes (`cmgl_dist.data.negation`) against hand labels of real IU-RR sentences, and the
per-word flags that `tokenize_texts` hands to the loss."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cmgl_dist.data.negation import denied_spans, denied_word_flags

FIXTURE = Path(__file__).parent / "data" / "negation_iurr.txt"
_WORD = re.compile(r"\w+")


def labelled_sentences() -> list[tuple[str, list[tuple[int, int]], list[bool]]]:
    """(sentence, \\w+ word spans, hand label per word) for each fixture line."""
    out = []
    for line in FIXTURE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        text, labels, spans, inside = "", [], [], False
        for piece in re.split(r"([\[\]])", line):
            if piece in "[]" and piece:
                inside = piece == "["
                continue
            for m in _WORD.finditer(piece):
                spans.append((len(text) + m.start(), len(text) + m.end()))
                labels.append(inside)
            text += piece
        out.append((text, spans, labels))
    return out


def counts(pairs) -> tuple[int, int, int]:
    tp = sum(p and t for p, t in pairs)
    return tp, sum(p and not t for p, t in pairs), sum(t and not p for p, t in pairs)


def test_scopes_agree_with_hand_labels_of_iurr_sentences():
    sentences = labelled_sentences()
    assert len(sentences) >= 100
    pairs, finding_pairs = [], []
    for text, spans, labels in sentences:
        predicted = denied_word_flags(text, spans)
        pairs += zip(predicted, labels)
        # The words the local loss is about: the five findings' names.
        finding_pairs += [(p, t) for p, t, (s, e) in zip(predicted, labels, spans)
                          if re.match(r"effusion|consolidation|atelectasis|edema|cardiomegaly|pneumothorax",
                                      text[s:e].lower())]
    tp, fp, fn = counts(pairs)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    ftp, ffp, ffn = counts(finding_pairs)
    print(f"words: {len(pairs)}, denied {tp + fn}: precision {precision:.3f}, recall {recall:.3f}; "
          f"finding words: {len(finding_pairs)}, precision {ftp / (ftp + ffp):.3f}, recall {ftp / (ftp + ffn):.3f}")
    assert tp + fn >= 150  # the fixture holds enough denied words to judge
    assert precision >= 0.95 and recall >= 0.95
    assert ffp + ffn <= 1


@pytest.mark.parametrize("text, denied", [
    ("No pleural effusion or pneumothorax.", "pleural effusion or pneumothorax"),
    ("Lungs are clear without focal consolidation, effusion, or pneumothorax.",
     "focal consolidation effusion or pneumothorax"),
    ("No pneumothorax, but there is a small left effusion.", "pneumothorax"),
    ("No focal consolidation; small right pleural effusion.", "focal consolidation"),
    ("No change in the small left effusion.", ""),                 # pseudo-negation
    ("Small effusion, not only at the base.", ""),                  # pseudo-negation
    ("Previously seen left effusion has resolved.", "Previously seen left effusion"),
    ("Pneumothorax is not seen.", "Pneumothorax"),
    ("Negative for acute abnormality. Heart is enlarged.", "acute abnormality"),
    ("Lungs are free of infiltrate and there is no pleural effusion.", "infiltrate pleural effusion"),
    ("No effusion is identified and the heart is enlarged.", "effusion"),
    ("Consolidation cannot be excluded.", ""),
    ("Interval resolution of the right lower lobe consolidation.", "the right lower lobe consolidation"),
])
def test_rules(text, denied):
    assert " ".join(text[s:e] for s, e in denied_spans(text)) == denied


def test_tokenize_marks_denied_words_and_never_special_words(minilm_tokenizer):
    from cmgl_dist.data.text import tokenize_texts

    texts = ["Mild cardiomegaly. No pleural effusion or pneumothorax.", "Normal chest."]
    out = tokenize_texts(minilm_tokenizer, texts, max_length=97, special_words="cls_sep")
    denied = [[w for w, d in zip(words, row) if d] for words, row in zip(out["words"], out["word_denied"].tolist())]
    assert denied == [["pleural", "effusion", "or", "pneumothorax"], []]
    assert out["word_denied"].shape == out["word_mask"].shape
    assert not (out["word_denied"] & ~out["word_mask"]).any()  # padding is never denied
    cut = tokenize_texts(minilm_tokenizer, texts[:1], max_length=8)  # truncation keeps words and flags aligned
    assert cut["word_denied"].shape[1] == len(cut["words"][0])


def test_drop_takes_denied_words_out_of_the_local_loss_and_keeps_all_denied_texts():
    import torch

    from cmgl_dist.config import LossConfig
    from cmgl_dist.losses.cmgl_loss import CMGLLoss, local_word_mask

    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    denied = torch.tensor([[False, True, True, False], [True, True, False, False]])
    assert local_word_mask(mask, denied, "keep") is mask
    assert local_word_mask(mask, denied, "drop").tolist() == [[True, False, False, False], [True, True, False, False]]

    # The loss with `drop` equals the loss of texts stripped of their denied words.
    torch.manual_seed(0)
    out = {"img_global": torch.randn(2, 8), "regions": torch.randn(2, 4, 8), "sentence": torch.randn(2, 8),
           "words": torch.randn(2, 4, 8), "word_mask": mask, "word_denied": denied}
    dropped = CMGLLoss(LossConfig(denied_words="drop", gather_negatives=False))(out)
    stripped = CMGLLoss(LossConfig(gather_negatives=False))({**out, "word_mask": local_word_mask(mask, denied, "drop")})
    kept = CMGLLoss(LossConfig(gather_negatives=False))(out)
    assert torch.equal(dropped["loss_local"], stripped["loss_local"])
    assert not torch.equal(dropped["loss_local"], kept["loss_local"])
    assert torch.equal(dropped["loss_global"], kept["loss_global"])


def test_absent_scores_denied_words_as_absence_against_the_float64_loop():
    """loss.denied_words=absent: the word roles, and S from CMGLLoss's scorer with its values and
    gradients equal to the float64 GLoRIA loop run on each text's affirmed words (gamma2) and
    denied words (-gamma2) apart; texts with no denied words and with only denied ones included."""
    import torch
    from gloria_oracle import absent_local_similarities
    from helpers import assert_close

    from cmgl_dist.losses.cmgl_loss import DENIED, absence_score, local_word_mask
    from cmgl_dist.losses.similarity import local_similarity

    mask = torch.tensor([[True, True, True, False], [True, True, False, False], [True, True, True, True]])
    denied = torch.tensor([[False, True, True, False], [False, False, False, False], [True, True, True, True]])
    roles = local_word_mask(mask, denied, "absent")
    assert roles.tolist() == [[1, 2, 2, 0], [1, 1, 0, 0], [2, 2, 2, 2]] and DENIED == 2

    g = torch.Generator().manual_seed(3)
    words = torch.randn(3, 4, 8, generator=g, dtype=torch.float64).requires_grad_()
    regions = torch.randn(5, 6, 8, generator=g, dtype=torch.float64).requires_grad_()
    grad = torch.randn(3, 5, generator=g, dtype=torch.float64)
    score = absence_score(lambda w, m, r, gamma2: local_similarity(w, m, r, 4.0, gamma2, backend="reference"), 5.0)
    S = score(words, roles, regions)
    got = torch.autograd.grad(S, (words, regions), grad)
    want_S = absent_local_similarities(words, mask, denied, regions, 4.0, 5.0)
    want = torch.autograd.grad(want_S, (words, regions), grad)
    assert_close(S, want_S, 1e-12, "S")
    assert_close(got[0], want[0], 1e-10, "dS/dwords")
    assert_close(got[1], want[1], 1e-10, "dS/dregions")
    # denied words count against an image where their context matches them
    keep = local_similarity(words, mask, regions, 4.0, 5.0, backend="reference")
    assert torch.equal(S[1], keep[1]) and not torch.allclose(S[0], keep[0])
