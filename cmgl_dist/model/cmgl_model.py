"""CMGLModel: image and text encoders with projection heads into one shared space of dimension D.

Image (GLoRIA `ImageEncoder`): global = pooled last stage -> linear to D (plus, with
`global_region_detector`, the max over regions of a small detector on the region map); regions =
the stride-16 feature map -> 1x1 convolution (no bias) to D, flattened to [B, R, D].
Text (GLoRIA `BertEncoder`): sentence and word features (see text_backbone.py) -> linear to D;
word slots with no word are zero after the projection too. (GLoRIA projects only the image, to
BERT's 768; separate heads let any text width meet any image width at `embed_dim`.)
Global features are not normalised here: the loss normalises where it takes cosines. Local
features are GLoRIA's by default; `local_scale` and `center_regions` (ModelConfig) change them
here, in the one place every consumer (losses, evaluation, attention maps) reads them from.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmgl_dist.config import ModelConfig
from cmgl_dist.phases import phase
from cmgl_dist.model.image_backbones import IMAGE_BACKBONES
from cmgl_dist.model.text_backbone import TextBackbone, freeze_text_layers, load_text_backbone


class MaxPooledDetector(nn.Module):
    """items [B, N, C] -> [B, out_dim]: linear and GELU per item, the max over items, linear.
    A finding in one region survives the max; a mean over the image dilutes it."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.detect = nn.Linear(in_dim, hidden)
        self.project = nn.Linear(hidden, out_dim)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.project(F.gelu(self.detect(items)).amax(dim=1))


class CMGLModel(nn.Module):
    def __init__(self, image_backbone: nn.Module, text_backbone: TextBackbone, tokenizer, embed_dim: int,
                 freeze_image: bool = False, local_init_gain: float = 1.0, local_scale: float | None = None,
                 center_regions: bool = False, global_region_detector: int = 0, image_upsample: int | None = None):
        super().__init__()
        self.local_scale = local_scale
        self.image_upsample = image_upsample
        self.center_regions = center_regions
        self.image_backbone = image_backbone
        self.text_backbone = text_backbone
        self.tokenizer = tokenizer
        self.embed_dim = embed_dim
        self.freeze_image = freeze_image
        if freeze_image:
            image_backbone.requires_grad_(False)
        self.image_global_head = nn.Linear(image_backbone.global_dim, embed_dim)
        self.image_region_head = nn.Conv2d(image_backbone.region_dim, embed_dim, kernel_size=1, bias=False)
        self.sentence_head = nn.Linear(text_backbone.hidden_dim, embed_dim)
        self.word_head = nn.Linear(text_backbone.hidden_dim, embed_dim)
        with torch.no_grad():  # see ModelConfig.local_init_gain
            for head in (self.image_region_head, self.word_head):
                head.weight.mul_(local_init_gain)
        # Made last, so that turning it on leaves the other heads' initial weights as they were.
        self.region_detector = (MaxPooledDetector(image_backbone.region_dim, global_region_detector, embed_dim)
                                if global_region_detector else None)

    def train(self, mode: bool = True) -> "CMGLModel":
        super().train(mode)
        if self.freeze_image:
            # A frozen backbone keeps its batch-norm statistics too.
            self.image_backbone.eval()
        return self

    def encode_image(self, images: torch.Tensor, with_pooled: bool = False) -> tuple[torch.Tensor, ...]:
        """images [B, 3, H, W] -> (global [B, D], regions [B, R, D]), then the backbone's pooled features
        [B, C] (`with_pooled`: what GLoRIA's linear classification fits on). With `image_upsample`
        N the images are first upsampled to N x N (GLoRIA's resnet_forward: 299, align_corners)."""
        if self.image_upsample is not None:
            images = F.interpolate(images, size=(self.image_upsample, self.image_upsample), mode="bilinear",
                                   align_corners=True)
        pooled, region_map = self.image_backbone(images)
        regions = self.image_region_head(region_map).flatten(2).transpose(1, 2)
        if self.center_regions:
            regions = regions - regions.mean(dim=1, keepdim=True)
        img_global = self.image_global_head(pooled)
        if self.region_detector is not None:
            img_global = img_global + self.region_detector(region_map.flatten(2).transpose(1, 2))
        if with_pooled:
            return img_global, self._scale_local(regions), pooled
        return img_global, self._scale_local(regions)

    def _scale_local(self, features: torch.Tensor) -> torch.Tensor:
        """Features of norm sqrt(local_scale) (zero rows stay zero), or as they are; in the
        features' dtype (the compute dtype under autocast: bf16 operands for the local loss's
        products), the norm taken in fp32."""
        if self.local_scale is None:
            return features
        with torch.autocast(device_type=features.device.type, enabled=False):
            scaled = F.normalize(features.float(), dim=-1) * self.local_scale ** 0.5
        return scaled.to(features.dtype)

    def encode_text(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """batch with input_ids, attention_mask, word_ids, word_mask -> (sentence [B, D], words [B, W, D], word_mask [B, W]).
        Optional host_input_ids / host_attention_mask: the same in host memory (`cmgl_dist.data.device.to_device`)."""
        word_mask = batch["word_mask"]
        host = (batch["host_input_ids"], batch["host_attention_mask"]) if "host_input_ids" in batch else None
        sentence, words = self.text_backbone(
            batch["input_ids"], batch["attention_mask"], batch["word_ids"], word_mask.shape[1], host)
        # The head's output dtype (bf16 under autocast), not the backbone's (fp32 after its
        # LayerNorm): a mask in the backbone's dtype would promote the words back to fp32.
        words = self._scale_local(self.word_head(words))
        words = words * word_mask.unsqueeze(-1).to(words.dtype)
        return self.sentence_head(sentence), words, word_mask

    def forward(self, batch: dict) -> dict:
        with phase("image_encoder_fwd"):
            img_global, regions = self.encode_image(batch["images"])
        with phase("text_encoder_fwd"):
            sentence, words, word_mask = self.encode_text(batch)
        out = {"img_global": img_global, "regions": regions, "sentence": sentence, "words": words,
               "word_mask": word_mask}
        if "word_denied" in batch:  # for the loss (loss.denied_words); the model itself does not use it
            out["word_denied"] = batch["word_denied"]
        return out


def build_model(model_cfg: ModelConfig) -> CMGLModel:
    image_backbone = IMAGE_BACKBONES[model_cfg.image_encoder](pretrained=model_cfg.image_pretrained)
    transformer, tokenizer = load_text_backbone(model_cfg.text_encoder)
    freeze_text_layers(transformer, model_cfg.freeze_text_layers)
    text_backbone = TextBackbone(transformer, model_cfg.text_last_layers, model_cfg.text_cache_mb,
                                 model_cfg.sentence_pool_length)
    return CMGLModel(image_backbone, text_backbone, tokenizer, model_cfg.embed_dim,
                     freeze_image=model_cfg.freeze_image, local_init_gain=model_cfg.local_init_gain,
                     local_scale=model_cfg.local_scale, center_regions=model_cfg.center_regions,
                     global_region_detector=model_cfg.global_region_detector,
                     image_upsample=model_cfg.image_upsample)
