"""Under bf16 autocast the model hands the local loss bf16 words and regions (tensor-core operands);
the loss keeps its softmaxes and sums in fp32 and returns fp32 similarities."""
import pytest
import torch

from cmgl_dist.config import load_config
from cmgl_dist.data.text import tokenize_texts
from cmgl_dist.kernels.attention import region_gram
from cmgl_dist.losses import CMGLLoss, cmgl_loss
from cmgl_dist.model import build_model

TEXTS = ["Mild cardiomegaly.", "No pleural effusion or pneumothorax. Heart size is normal.",
         "Left basilar atelectasis."]
# Downloads replaced by local stand-ins; everything else (local_scale, center_regions, the
# region detector, embed_dim) is the config's own.
CONFIGS = {
    "gloria_r50_bert": dict(text_encoder="tiny", image_pretrained=False),
    "iurr_offline": dict(),
}


def _model_and_loss(name):
    cfg = load_config(name)
    model = build_model(cfg.model.model_copy(update=CONFIGS[name])).train()
    return model, CMGLLoss(cfg.loss), cfg


def _batch(model, cfg):
    batch = tokenize_texts(model.tokenizer, TEXTS, cfg.data.max_length)
    batch["images"] = torch.randn(len(TEXTS), 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return batch


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_local_features_reach_the_loss_in_the_compute_dtype(name, monkeypatch):
    model, loss_fn, cfg = _model_and_loss(name)
    seen = []

    def spy(words, word_mask, regions, *args, **kwargs):
        seen.append((words.dtype, regions.dtype))
        S = real(words, word_mask, regions, *args, **kwargs)
        seen.append(S.dtype)
        return S

    real = cmgl_loss.local_similarity
    monkeypatch.setattr(cmgl_loss, "local_similarity", spy)
    batch = _batch(model, cfg)
    with torch.autocast("cpu", torch.bfloat16):
        out = model(batch)
        parts = loss_fn(out)
    calls = 2 if cfg.loss.denied_words == "absent" else 1  # absent: one call per group of words
    assert seen == [(torch.bfloat16, torch.bfloat16), torch.float32] * calls, (name, seen)
    assert out["words"].dtype == out["regions"].dtype == torch.bfloat16
    assert parts["loss_local"].dtype == torch.float32 and torch.isfinite(parts["loss"])
    parts["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_evaluation_features_take_the_compute_dtype(name):
    model, _, cfg = _model_and_loss(name)
    batch = _batch(model, cfg)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        _, regions = model.encode_image(batch["images"])
        _, words, word_mask = model.encode_text(batch)
    assert words.dtype == regions.dtype == torch.bfloat16
    assert (words[~word_mask] == 0).all(), "padded word slots stay zero"
    if model.local_scale is not None:  # normalised in fp32, then rounded once
        norms = words[word_mask].float().norm(dim=-1)
        torch.testing.assert_close(norms, torch.full_like(norms, model.local_scale ** 0.5), rtol=1e-2, atol=0)


def test_region_gram_stays_fp32_under_autocast():
    regions = torch.randn(2, 5, 8).bfloat16()
    with torch.autocast("cpu", torch.bfloat16):
        gram = region_gram(regions)
    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram, regions.float() @ regions.float().transpose(1, 2))
