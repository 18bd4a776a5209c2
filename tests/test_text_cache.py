"""The locked text encoder's feature cache: same features as encoding, once per distinct text."""
import pytest
import torch

from cmgl_dist.data.text import tokenize_texts
from cmgl_dist.model.text_backbone import TextBackbone, freeze_text_layers, load_text_backbone

TEXTS = ["small left pleural effusion", "heart size is normal. the lungs are clear.", "no acute disease"]


def backbone(cache_mb: int, frozen_layers: int = 4) -> tuple[TextBackbone, object]:
    transformer, tokenizer = load_text_backbone("tiny")
    freeze_text_layers(transformer, frozen_layers)
    return TextBackbone(transformer, 4, cache_mb).train(), tokenizer


def features(model, tokenizer, texts):
    batch = tokenize_texts(tokenizer, texts, 32)
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], batch["word_ids"], batch["word_mask"].shape[1])


def test_cached_features_equal_encoded_ones_and_each_text_is_encoded_once():
    plain, tokenizer = backbone(0)
    cached, _ = backbone(64)
    for texts in (TEXTS, TEXTS[::-1], TEXTS[1:] + ["no acute disease"]):  # other batches, other padding
        for want, got in zip(features(plain, tokenizer, texts), features(cached, tokenizer, texts)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (cached.cache.misses, cached.cache.hits) == (3, 6)


def test_a_locked_encoder_runs_without_dropout_in_training():
    model, tokenizer = backbone(0)
    assert model.training and not model.transformer.training
    first, second = features(model, tokenizer, TEXTS), features(model, tokenizer, TEXTS)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_rows_past_the_budget_are_encoded_but_not_kept():
    model, tokenizer = backbone(64)
    model.cache.budget_bytes = 1
    features(model, tokenizer, TEXTS)
    features(model, tokenizer, TEXTS)
    assert model.cache.rows == {} and model.cache.misses == 6


def test_the_cache_refuses_a_trainable_encoder():
    with pytest.raises(ValueError, match="text_cache_mb needs a locked text encoder"):
        backbone(64, frozen_layers=2)


def test_a_left_padded_batch_is_refused():
    model, tokenizer = backbone(64)
    batch = tokenize_texts(tokenizer, TEXTS, 32)
    left = batch["attention_mask"].flip(1)
    with pytest.raises(ValueError, match="right-padded"):
        model.cache.token_features(batch["input_ids"], left, model._encode)
