"""Zero-shot classification of the five pathologies from prompt sets, scored as GLoRIA does.

score(image, class) = mean (`eval.prompt_pooling=mean`) or max (`max`, GLoRIA's code) over the
class's prompts of (global cosine + local similarity) / 2, then standardised per class over the
images (GLoRIA's `utils.normalize`). A prompt's local words are `eval.zero_shot_special_words`'s
slots (default: the training slots). The pathologies are multi-label, so each class is its own binary problem and its AUC comes from its own score
column (the standardisation is monotone per column and does not change the AUC; it makes the
scores of different classes comparable in the saved score file and the ROC plots).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from cmgl_dist.data import tokenize_texts
from cmgl_dist.evaluate.features import SplitFeatures
from cmgl_dist.evaluate.similarity import at_least_float32, image_text_similarity


@torch.inference_mode()
def encode_texts(model, texts: list[str], max_length: int, special_words: str = "none"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sentence [T, D], words [T, W, D], word_mask [T, W]) through the training text path."""
    device = next(model.parameters()).device
    batch = tokenize_texts(model.tokenizer, texts, max_length, special_words)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    sentence, words, word_mask = model.encode_text(batch)
    return at_least_float32(sentence), at_least_float32(words), word_mask.bool()


def prompt_similarity(model, feats: SplitFeatures, texts: list[str], *, max_length: int, gamma1: float,
                      gamma2: float, special_words: str = "none", word_pooling: str = "logsumexp",
                      prompt_pooling: str = "mean") -> torch.Tensor:
    """[N]: each image's similarity to the texts, pooled over the texts (mean, or GLoRIA's max)."""
    sentence, words, word_mask = encode_texts(model, texts, max_length, special_words)
    sim = image_text_similarity(feats.image_global, feats.regions, sentence, words, word_mask,
                                gamma1=gamma1, gamma2=gamma2, word_pooling=word_pooling)   # [N, T]
    if prompt_pooling == "mean":
        return sim.mean(dim=1).cpu()
    if prompt_pooling == "max":
        return sim.amax(dim=1).cpu()
    raise ValueError(f"prompt_pooling={prompt_pooling!r} is not mean or max (eval.prompt_pooling)")


def class_scores(model, feats: SplitFeatures, prompts: dict[str, list[str]], *, max_length: int,
                 gamma1: float, gamma2: float, negatives: Optional[dict[str, Sequence[str]]] = None,
                 special_words: str = "none", word_pooling: str = "logsumexp", prompt_pooling: str = "mean",
                 standardise: bool = True) -> np.ndarray:
    """[N, C] zero-shot scores, classes in `prompts` order; standardised per class over the N images
    (`standardise`), or the raw pooled similarities, which do not depend on the other images."""
    common = dict(max_length=max_length, gamma1=gamma1, gamma2=gamma2, special_words=special_words,
                  word_pooling=word_pooling, prompt_pooling=prompt_pooling)
    columns = []
    for pathology, texts in prompts.items():
        score = prompt_similarity(model, feats, texts, **common)
        if negatives is not None:
            score = score - prompt_similarity(model, feats, list(negatives[pathology]), **common)
        columns.append(score)
    scores = torch.stack(columns, dim=1).double().numpy()
    return standardise_columns(scores) if standardise else scores


def standardise_columns(scores: np.ndarray) -> np.ndarray:
    """GLoRIA's `utils.normalize`: each class's scores minus their mean, over their std (0 std: kept at 1)."""
    std = scores.std(axis=0)
    return (scores - scores.mean(axis=0)) / np.where(std > 0, std, 1.0)


def zero_shot_settings(cfg, settings) -> dict:
    """The keyword arguments of `class_scores` an export's config and the eval settings choose."""
    return dict(max_length=cfg.data.max_length, gamma1=cfg.loss.gamma1, gamma2=cfg.loss.gamma2,
                special_words=zero_shot_slots(cfg, settings), word_pooling=settings.zero_shot_word_pooling,
                prompt_pooling=settings.prompt_pooling)


def zero_shot_slots(cfg, settings) -> str:
    """A prompt's local words: eval.zero_shot_special_words, else the training slots (data.special_words)."""
    return settings.zero_shot_special_words or cfg.data.special_words
