"""tokenize_texts: the sub-word -> word map, word masks and truncation."""
import re

import pytest

from cmgl_dist.data.text import tokenize_texts
from cmgl_dist.model.text_backbone import minilm_tokenizer

REPORT_LIKE_TEXTS = [
    "Mild cardiomegaly. No pleural effusion or pneumothorax.",
    "Heart size is normal; XXXX opacity at the T11-T12 level, 2.5 cm (stable since 7/2009).",
    "Degenerative changes of the thoracic spine... Lungs are clear!!",
    "Café-au-lait: no acute cardiopulmonary abnormality",
]


@pytest.fixture(scope="module")
def tokenizer():
    return minilm_tokenizer()


def test_pieces_of_one_word_share_its_index(tokenizer):
    out = tokenize_texts(tokenizer, ["Mild cardiomegaly."], max_length=97)
    tokens = tokenizer.convert_ids_to_tokens(out["input_ids"][0])
    assert tokens[:6] == ["[CLS]", "mild", "card", "##iom", "##ega", "##ly"]
    assert out["word_ids"][0].tolist() == [-1, 0, 1, 1, 1, 1, -1, -1]  # '.' and [SEP] belong to no word
    assert out["words"] == [["Mild", "cardiomegaly"]]
    assert out["word_mask"].tolist() == [[True, True]]


@pytest.mark.parametrize("text", REPORT_LIKE_TEXTS)
def test_words_are_the_pieces_they_cover(tokenizer, text):
    out = tokenize_texts(tokenizer, [text], max_length=97)
    tokens = tokenizer.convert_ids_to_tokens(out["input_ids"][0])
    word_ids = out["word_ids"][0].tolist()
    words = out["words"][0]
    assert out["word_mask"][0].sum().item() == len(words) == max(word_ids) + 1
    for index, word in enumerate(words):
        positions = [p for p, w in enumerate(word_ids) if w == index]
        assert positions == list(range(positions[0], positions[-1] + 1)), "a word's pieces are contiguous"
        pieces = "".join(tokens[p].removeprefix("##") for p in positions)
        assert pieces == tokenizer.backend_tokenizer.normalizer.normalize_str(word)
        assert re.search(r"\w", word)
    for position, token in enumerate(tokens):
        if word_ids[position] == -1 and token not in ("[CLS]", "[SEP]", "[PAD]"):
            assert not re.search(r"\w", token), f"{token!r} is a word but has no word id"


def test_batch_pads_words_and_tokens(tokenizer):
    out = tokenize_texts(tokenizer, ["No effusion.", "", "Heart size and mediastinal contours are normal."], 97)
    lengths = out["attention_mask"].sum(dim=1).tolist()
    assert out["input_ids"].shape[1] == max(lengths)
    assert out["word_mask"].sum(dim=1).tolist() == [2, 0, 7]
    assert out["word_mask"].shape == (3, 7)
    assert out["words"][1] == []
    padding = out["attention_mask"] == 0
    assert (out["word_ids"][padding] == -1).all()


def test_batch_of_empty_texts_keeps_one_word_slot(tokenizer):
    out = tokenize_texts(tokenizer, ["", "..."], 97)
    assert out["word_mask"].shape == (2, 1)
    assert not out["word_mask"].any()
    assert (out["word_ids"] == -1).all()


def test_truncation_keeps_the_pieces_that_fit(tokenizer):
    text = "Mild cardiomegaly with pleural effusion."
    full = tokenize_texts(tokenizer, [text], max_length=97)
    cut = tokenize_texts(tokenizer, [text], max_length=5)  # [CLS] mild card ##iom [SEP]
    assert cut["input_ids"].shape == (1, 5)
    assert cut["word_ids"][0, :-1].tolist() == full["word_ids"][0, :4].tolist() == [-1, 0, 1, 1]
    assert cut["word_ids"][0, -1].item() == -1
    assert cut["words"] == [["Mild", "cardiom"]]
    assert cut["word_mask"].tolist() == [[True, True]]


def test_max_length_bounds_every_row(tokenizer):
    long_report = " ".join(REPORT_LIKE_TEXTS * 10)
    out = tokenize_texts(tokenizer, [long_report, "Normal chest."], max_length=97)
    assert out["input_ids"].shape[1] == 97
    assert out["word_ids"].max().item() == out["word_mask"].shape[1] - 1
