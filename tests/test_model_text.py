"""Text encoder: layer aggregation, pieces summed into words, masks, the tiny and MiniLM backbones."""
import pytest
import torch

from cmgl_dist.config import ModelConfig
from cmgl_dist.data.text import tokenize_texts
from cmgl_dist.model import build_model
from cmgl_dist.model.text_backbone import TextBackbone, load_text_backbone, minilm_path

TEXTS = ["Mild cardiomegaly.", "No pleural effusion or pneumothorax. Heart size is normal."]


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(ModelConfig(image_encoder="tiny_cnn", image_pretrained=False, text_encoder="tiny",
                                   embed_dim=16)).eval()


def _hidden_sum(transformer, batch, last_layers):
    with torch.no_grad():
        out = transformer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          output_hidden_states=True)
    return sum(out.hidden_states[-last_layers:])


def test_word_is_the_sum_of_its_pieces_over_the_last_layers(tiny_model):
    batch = tokenize_texts(tiny_model.tokenizer, TEXTS, 97)
    backbone = tiny_model.text_backbone
    with torch.no_grad():
        sentence, words = backbone(batch["input_ids"], batch["attention_mask"], batch["word_ids"],
                                   batch["word_mask"].shape[1])
    hidden = _hidden_sum(backbone.transformer, batch, last_layers=4)
    # 'cardiomegaly' is word 1 of text 0: tokens 2..5 (card ##iom ##ega ##ly).
    assert batch["word_ids"][0, 2:6].tolist() == [1, 1, 1, 1]
    torch.testing.assert_close(words[0, 1], hidden[0, 2:6].sum(dim=0))
    torch.testing.assert_close(words[0, 0], hidden[0, 1])
    real_tokens = batch["attention_mask"][0].sum()
    torch.testing.assert_close(sentence[0], hidden[0, :real_tokens].mean(dim=0))


def test_projected_words_follow_the_mask(tiny_model):
    batch = tokenize_texts(tiny_model.tokenizer, TEXTS, 97)
    with torch.no_grad():
        sentence, words, word_mask = tiny_model.encode_text(batch)
    assert sentence.shape == (2, 16)
    assert words.shape == (2, batch["word_mask"].shape[1], 16)
    assert torch.equal(word_mask, batch["word_mask"])
    assert word_mask[0].sum() == 2 and not word_mask[0, 2:].any()
    assert (words[0, 2:] == 0).all(), "padded word slots are zero after the projection"
    assert (words[word_mask].abs().sum(dim=-1) > 0).all()


def test_features_do_not_depend_on_the_batch_padding(tiny_model):
    alone = tokenize_texts(tiny_model.tokenizer, TEXTS[:1], 97)
    padded = tokenize_texts(tiny_model.tokenizer, TEXTS, 97)
    with torch.no_grad():
        sentence_alone, words_alone, _ = tiny_model.encode_text(alone)
        sentence_padded, words_padded, _ = tiny_model.encode_text(padded)
    torch.testing.assert_close(sentence_alone[0], sentence_padded[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(words_alone[0], words_padded[0, :words_alone.shape[1]], rtol=1e-5, atol=1e-5)


def test_tiny_bert_init_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first, _ = load_text_backbone("tiny")
    assert torch.equal(torch.rand(1), expected_next)
    second, _ = load_text_backbone("tiny")
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_minilm_loads_offline_and_matches_sentence_transformers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    transformer, tokenizer = load_text_backbone("minilm")
    assert transformer.config.num_hidden_layers == 6 and transformer.config.hidden_size == 384
    # all-MiniLM-L6-v2 is trained as mean pooling of the last layer; with one layer our sentence
    # feature is exactly that, so it must reproduce the reference embedding.
    backbone = TextBackbone(transformer.eval(), last_layers=1)
    batch = tokenize_texts(tokenizer, TEXTS, 97)
    with torch.no_grad():
        sentence, _ = backbone(batch["input_ids"], batch["attention_mask"], batch["word_ids"],
                               batch["word_mask"].shape[1])
    reference = sentence_transformers.SentenceTransformer(minilm_path(), device="cpu").encode(
        TEXTS, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(torch.nn.functional.normalize(sentence, dim=-1), reference, rtol=1e-4, atol=1e-5)


def test_freeze_text_layers_freezes_embeddings_and_the_first_layers():
    model = build_model(ModelConfig(image_encoder="tiny_cnn", image_pretrained=False, text_encoder="tiny",
                                    freeze_text_layers=2))
    transformer = model.text_backbone.transformer
    assert not any(p.requires_grad for p in transformer.embeddings.parameters())
    assert not any(p.requires_grad for layer in transformer.encoder.layer[:2] for p in layer.parameters())
    assert all(p.requires_grad for layer in transformer.encoder.layer[2:] for p in layer.parameters())
    assert all(p.requires_grad for p in model.word_head.parameters())


@pytest.mark.parametrize("field, value", [("freeze_text_layers", 5), ("text_last_layers", 5)])
def test_settings_beyond_the_layer_count_fail(field, value):
    with pytest.raises(ValueError, match=field):
        build_model(ModelConfig(image_encoder="tiny_cnn", image_pretrained=False, text_encoder="tiny",
                                **{field: value}))


def test_a_tokenizer_that_is_not_its_models_is_refused(tmp_path):
    """transformers 5.x ignores `vocab_file=` and builds a 5-token tokenizer: the vocabulary check
    refuses it, in a folder as in load_text_backbone, and the random BERT builder uses `vocab=`."""
    from pathlib import Path

    from transformers import BertModel, BertTokenizerFast

    from cmgl_dist.bench.random_bert import build_random_bert
    from cmgl_dist.model.text_backbone import TINY_BERT_SHAPE, check_vocabulary, embedding_rows

    vocab = Path(minilm_path()) / "vocab.txt"
    assert check_vocabulary(BertTokenizerFast(vocab=str(vocab)), 30522, "vocab=") == 30522
    with pytest.raises(ValueError, match="5 tokens but the model's embedding has 30522 rows"):
        check_vocabulary(BertTokenizerFast(vocab_file=str(vocab)), 30522, "vocab_file=")
    tiny = TINY_BERT_SHAPE
    assert build_random_bert(vocab, tmp_path / "bert", shape=tiny) == 30522
    with pytest.raises(ValueError, match="30522 tokens, expected 30000"):
        build_random_bert(vocab, tmp_path / "other", expected=30000, shape=tiny)
    # A folder whose model's embedding is not its tokenizer's: refused where training loads it.
    grown = BertModel.from_pretrained(str(tmp_path / "bert"))
    grown.resize_token_embeddings(30530)
    grown.save_pretrained(str(tmp_path / "bert"))
    with pytest.raises(ValueError, match="30522 tokens but the model's embedding has 30530 rows"):
        load_text_backbone(str(tmp_path / "bert"))
    assert embedding_rows(load_text_backbone("tiny")[0]) == 30522
