"""GLoRIA's conventions where cmgl differs, each selectable: special tokens as local words, and the
zero-shot local score as the max over words (cmgl: the training log-sum-exp)."""
import pytest
import torch
from transformers import AutoTokenizer

from cmgl_dist.config import load_config
from cmgl_dist.data.text import tokenize_texts
from cmgl_dist.losses import local_similarity_reference
from cmgl_dist.losses.similarity import local_similarity
from cmgl_dist.model.text_backbone import minilm_path
from test_local_reference import _gloria_attention, _gloria_cosine, _ragged_batch


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def test_cmgl_words_leave_out_cls_and_sep(tokenizer):
    out = tokenize_texts(tokenizer, ["Mild cardiomegaly."], max_length=97)
    assert out["words"] == [["Mild", "cardiomegaly"]]


def test_sep_words_are_gloria_slots_one_to_cap_len(tokenizer):
    """GLoRIA's local loss and zero-shot score take slots 1..cap_len, cap_len = words + 1: [SEP] is the last."""
    out = tokenize_texts(tokenizer, ["Mild cardiomegaly.", "No effusion"], max_length=97, special_words="sep")
    assert out["words"] == [["Mild", "cardiomegaly", "[SEP]"], ["No", "effusion", "[SEP]"]]
    for row in range(2):
        tokens = tokenizer.convert_ids_to_tokens(out["input_ids"][row])
        ids = dict(zip(tokens, out["word_ids"][row].tolist()))
        assert (ids["[CLS]"], ids["[SEP]"], ids.get("[PAD]", -1)) == (-1, 2, -1)
    assert out["word_mask"].tolist() == [[True] * 3, [True] * 3]


def test_cls_sep_words_are_gloria_whole_word_tensor(tokenizer):
    out = tokenize_texts(tokenizer, ["Mild cardiomegaly."], max_length=97, special_words="cls_sep")
    assert out["words"] == [["[CLS]", "Mild", "cardiomegaly", "[SEP]"]]
    assert out["word_ids"][0].tolist() == [0, 1, 2, 2, 2, 2, -1, 3]  # '.' still belongs to no word


def test_unknown_special_words_are_refused(tokenizer):
    with pytest.raises(ValueError, match="special_words"):
        tokenize_texts(tokenizer, ["x"], 97, special_words="all")


def gloria_zero_shot_local(words, lengths, regions, gamma1, gamma2):
    """GLoRIA's `get_local_similarities`: log of the max over words of exp(gamma2 * cos), as S [T, I]."""
    columns = []
    for t, words_num in enumerate(lengths):
        word = words[t, :words_num].T.unsqueeze(0).repeat(regions.shape[0], 1, 1)  # [I, D, W]
        context = _gloria_attention(word, regions.transpose(1, 2), gamma1)
        cos = _gloria_cosine(word.transpose(1, 2).reshape(-1, word.shape[1]),
                             context.transpose(1, 2).reshape(-1, word.shape[1])).view(regions.shape[0], words_num)
        columns.append(torch.log(cos.mul(gamma2).exp().max(dim=1, keepdim=True).values))
    return torch.cat(columns, 1).T


def test_max_word_pooling_matches_gloria_zero_shot_score():
    words, word_mask, regions, lengths = _ragged_batch(5, 4, 7, 9, 6, seed=3)
    expected = gloria_zero_shot_local(words, lengths, regions, 4.0, 5.0)
    got = local_similarity_reference(words, word_mask, regions, 4.0, 5.0, word_pooling="max", block_elements=500)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    lse = local_similarity_reference(words, word_mask, regions, 4.0, 5.0)
    several = torch.tensor(lengths) > 1
    assert (lse[several] > got[several]).all(), "log-sum-exp exceeds the max where a text has several words"
    torch.testing.assert_close(lse[~several], got[~several])


def test_max_pooling_routes_to_the_reference_and_is_checked():
    words, word_mask, regions, _ = _ragged_batch(2, 2, 3, 4, 5, seed=1)
    assert torch.equal(local_similarity(words, word_mask, regions, word_pooling="max", backend="auto"),
                       local_similarity_reference(words, word_mask, regions, word_pooling="max"))
    with pytest.raises(ValueError, match="word_pooling"):
        local_similarity_reference(words, word_mask, regions, word_pooling="mean")


def test_config_selects_both_conventions():
    cfg = load_config("debug", ["data.special_words=sep", "eval.retrieval_word_pooling=max"])
    assert (cfg.data.special_words, cfg.eval.retrieval_word_pooling) == ("sep", "max")
    default = load_config("debug")
    assert default.data.special_words == "none"
    assert (default.eval.zero_shot_word_pooling, default.eval.retrieval_word_pooling) == ("max", "logsumexp")


def test_a_config_naming_one_word_pooling_sets_both():
    """Exports written before the split carry `eval.word_pooling`; they still load, meaning what they meant."""
    cfg = load_config("debug", ["eval.word_pooling=logsumexp"])
    assert (cfg.eval.zero_shot_word_pooling, cfg.eval.retrieval_word_pooling) == ("logsumexp", "logsumexp")
