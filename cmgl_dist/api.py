"""Use a trained export from Python: no shards, no config juggling.

    import cmgl_dist
    m = cmgl_dist.load("runs/iurr/export")                  # CPU, or device="cuda"
    scores = m.zero_shot(["a.png", "b.png"])                 # [2, 5]: the five pathologies
    scores = m.zero_shot(images, {"nodule": ["small nodule in the right upper lobe"]})
    words, maps = m.attention("a.png", "small left pleural effusion")   # maps [W, H, W_img]

Images are one image or a sequence (list or tuple) of them: file paths (decoded by the packer's
one decode path: PNG/JPEG/WebP, 8/16-bit, L/RGB/RGBA, EXIF orientation applied), PIL images, or
image tensors ([H, W] or [C, H, W]; [N, C, H, W] for several): uint8 as Pillow converts it, wider
integers windowed from their own range as a 16-bit file is, floats only in [0, 1] (anything else is
refused, never clipped). Encoded images (`encode_images`' `Encoded`) may be passed to `zero_shot`
instead. `classes` is a sequence of names or {name: prompts}; a single string is one class. Each
class name, prompt and word needs a letter or digit. Each image goes through
evaluation's transform (longest side to data.image_size, zero-padded square, centre crop,
ImageNet normalisation). `pack_size` puts a packer's resize first, as `cmgl pack --image-size`
does, so scores equal those of `cmgl evaluate` on such a pack. Zero-shot scores follow the
export's eval settings (prompt sets, word and prompt pooling, zero-shot slots): the same function
`cmgl evaluate` calls, unstandardised (each image's score does not depend on the others).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cmgl_dist.data import images as transforms
from cmgl_dist.shards.images import grey_from_wide, open_grey, resize_longest, to_grey8

ImageInput = Union[str, os.PathLike, Image.Image, torch.Tensor]


class Encoded(NamedTuple):
    """Encoded images (what `encode_images` returns): `zero_shot` takes them instead of images."""
    image_global: torch.Tensor  # [N, D]
    regions: torch.Tensor       # [N, R, D]


def load(export_dir: str | os.PathLike, device: Optional[str | torch.device] = None,
         pack_size: Optional[int] = None) -> "CMGL":
    """An export folder written by `cmgl train` (RUN_DIR/export), on `device` (default: CUDA if present)."""
    from cmgl_dist.engine.export import load_exported

    model, cfg = load_exported(export_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return CMGL(model.to(device).eval(), cfg, device, pack_size)


class CMGL:
    """A loaded export: `model`, `cfg`, `tokenizer`, `transform`, and the inference functions."""

    def __init__(self, model, cfg, device: torch.device, pack_size: Optional[int] = None):
        self.model, self.cfg, self.device, self.pack_size = model, cfg, device, pack_size
        self.tokenizer = model.tokenizer

    def grey(self, image: ImageInput) -> Image.Image:
        """An 8-bit grey PIL image from a path, a PIL image or a tensor (ImageError if unreadable)."""
        if isinstance(image, (str, os.PathLike)):
            return open_grey(Path(image), draft_size=self.pack_size or self.cfg.data.image_size)
        if isinstance(image, Image.Image):
            return to_grey8(image)
        if torch.is_tensor(image):
            return _tensor_to_grey(image)
        raise TypeError(f"an image is a path, a PIL image or a tensor, not {type(image).__name__}")

    def transform(self, image: ImageInput) -> torch.Tensor:
        """[3, crop, crop]: evaluation's transform of one image."""
        grey = self.grey(image)
        if self.pack_size:
            grey = resize_longest(grey, self.pack_size)
        return transforms.eval_image(grey, self.cfg.data)

    @torch.inference_mode()
    def encode_images(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 32) -> Encoded:
        """Encoded(global [N, D], regions [N, R, D]) on the CPU, float32."""
        batches = [self.encode_pixels(torch.stack([self.transform(image) for image in chunk]))
                   for chunk in _chunks(_as_list(images), batch_size)]
        if not batches:
            raise ValueError("encode_images needs at least one image")
        return Encoded(torch.cat([g for g, _ in batches]), torch.cat([r for _, r in batches]))

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformed images [B, 3, crop, crop] -> (global [B, D], regions [B, R, D]) on the CPU, float32."""
        image_global, regions = self.model.encode_image(pixels.to(self.device))
        return image_global.float().cpu(), regions.float().cpu()

    def encode_texts(self, texts: str | Sequence[str], special_words: Optional[str] = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sentence [T, D], words [T, W, D], word_mask [T, W]) through the training text path."""
        from cmgl_dist.evaluate.zero_shot import encode_texts

        texts = [texts] if isinstance(texts, str) else list(texts)
        slots = special_words or self.cfg.data.special_words
        return tuple(t.cpu() for t in encode_texts(self.model, texts, self.cfg.data.max_length, slots))

    def zero_shot(self, images, classes: Optional[Sequence[str] | dict[str, Sequence[str]]] = None,
                  n_prompts: Optional[int] = None, seed: int = 0, standardise: bool = False
                  ) -> tuple[np.ndarray, list[str]]:
        """([N, C] scores, class names). `classes`: None (the five pathologies' prompt sets), class
        names (each its own prompt, or its prompt set when it is one of the five), or {class: prompts}."""
        from cmgl_dist.evaluate.features import SplitFeatures

        if n_prompts is not None and (type(n_prompts) is not int or n_prompts < 1):
            raise ValueError(f"n_prompts={n_prompts!r}: give a whole number >= 1 (or None: the export's eval.n_prompts)")
        image_global, regions = images if isinstance(images, Encoded) else self.encode_images(images)
        feats = SplitFeatures(keys=[], labels=torch.zeros(0), image_global=image_global, regions=regions)
        prompts = class_prompt_sets(classes, n_prompts or self.cfg.eval.n_prompts, seed, self.cfg.eval.prompts)
        return self.class_scores(feats, prompts, standardise), list(prompts)

    def class_scores(self, feats, prompts: dict[str, list[str]], standardise: bool) -> np.ndarray:
        from cmgl_dist.evaluate.zero_shot import class_scores, zero_shot_settings

        return class_scores(self.model, feats, prompts, standardise=standardise,
                            **zero_shot_settings(self.cfg, self.cfg.eval))

    def attention(self, image: ImageInput, text: str) -> tuple[list[str], torch.Tensor]:
        """(the text's words, [W, H, W_img] maps): each word's attention over the regions, upsampled
        to the crop and placed back on the original image's pixels (each map sums to 1 over the
        part of the image the model saw; 0 outside the centre crop)."""
        from cmgl_dist.data.text import tokenize_texts
        from cmgl_dist.evaluate.similarity import pair_attention_map

        if problem := check_prompt(text):
            raise ValueError(f"text {str(text)[:80]!r} {problem}")
        width, height = self.grey(image).size
        _, regions = self.encode_images([image])
        _, words, word_mask = self.encode_texts([text])
        strings = tokenize_texts(self.tokenizer, [text], self.cfg.data.max_length, self.cfg.data.special_words)
        attention = pair_attention_map(words[0][word_mask[0]], regions[0], self.cfg.loss.gamma1)
        maps = torch.stack([self.to_image(a, (width, height)) for a in attention])
        return strings["words"][0], maps

    def to_image(self, attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """[R] attention -> [H, W] on an image of `size` (width, height), through the inverse transform."""
        from cmgl_dist.evaluate.localisation import attention_heatmap

        data = self.cfg.data
        square = torch.zeros(data.image_size, data.image_size)
        offset = (data.image_size - data.crop_size) // 2
        square[offset:offset + data.crop_size, offset:offset + data.crop_size] = attention_heatmap(
            attention, data.crop_size)
        scale = data.image_size / max(size)
        content_w, content_h = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
        left, top = (data.image_size - content_w) // 2, (data.image_size - content_h) // 2
        content = square[top:top + content_h, left:left + content_w]
        full = F.interpolate(content[None, None], size=(size[1], size[0]), mode="bilinear", align_corners=False)[0, 0]
        return full / full.sum().clamp(min=1e-12)


def class_prompt_sets(classes, n_prompts: int, seed: int, vocabulary: str = "cmgl") -> dict[str, list[str]]:
    """class -> prompts: the five pathologies' sets by default; a bare class name is its own prompt
    unless it names one of the five."""
    from cmgl_dist.evaluate.prompts import class_prompts

    known = class_prompts(n_prompts, seed=seed, vocabulary=vocabulary)
    if classes is None:
        return known
    if isinstance(classes, str):  # one class, not its letters
        classes = [classes]
    if isinstance(classes, dict):
        sets = {name: [prompts] if isinstance(prompts, str) else list(prompts) for name, prompts in classes.items()}
    else:
        sets = {name: known.get(name, [name.replace("_", " ")]) if isinstance(name, str) else [name]
                for name in classes}
    empty = [name for name, prompts in sets.items() if not prompts]
    if not sets or empty:
        raise ValueError(f"zero-shot needs at least one class, each with a prompt (empty: {empty})")
    for name, prompts in sets.items():
        for text in (name, *prompts):
            if problem := check_prompt(text):
                raise ValueError(f"class {str(name)[:80]!r}: {str(text)[:80]!r} {problem}")
    return sets


def check_prompt(text) -> Optional[str]:
    """Why `text` cannot be a class name, prompt or word to encode (None when it can): a string
    holding at least one letter or digit (an empty or punctuation-only text has no word)."""
    if not isinstance(text, str):
        return f"is a {type(text).__name__}, not a string"
    if not any(c.isalnum() for c in text):
        return "has no letter or digit: no word to encode"
    return None


def _tensor_to_grey(tensor: torch.Tensor) -> Image.Image:
    """[H, W] or [C, H, W] (C = 1, 3 or 4) -> grey PIL, as a file of that depth decodes: uint8 as
    Pillow converts it; wider integers (a 12-bit image in int32, uint16) windowed from their own
    range; floats must lie in [0, 1] (scaled to 0..255), others are refused, not clipped."""
    if tensor.dim() == 3 and tensor.shape[0] in (1, 3, 4):
        tensor = tensor.permute(1, 2, 0)
    elif tensor.dim() != 2:
        raise ValueError(f"an image tensor is [H, W] or [C, H, W] with C in (1, 3, 4); got {tuple(tensor.shape)}")
    array = tensor.detach().cpu()
    if array.dtype == torch.bool or array.is_complex():
        raise ValueError(f"an image tensor holds integers or floats in [0, 1], not {array.dtype}")
    if array.is_floating_point():
        low, high = (array.min().item(), array.max().item()) if array.numel() else (0.0, 0.0)
        if not (math.isfinite(low) and math.isfinite(high) and 0 <= low and high <= 1):
            raise ValueError(f"a float image tensor holds values in [0, 1]; this one spans {low:g}..{high:g}: "
                             "divide by its full scale (255 for 8-bit, 65535 for 16-bit) or pass integers")
        array = (array * 255).round().to(torch.uint8)
    elif array.dtype != torch.uint8:
        return grey_from_wide(array.numpy())
    array = array.numpy()
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return to_grey8(Image.fromarray(array))


def _as_list(images) -> list:
    if isinstance(images, (str, os.PathLike, Image.Image)) or (torch.is_tensor(images) and images.dim() <= 3):
        return [images]
    return list(images)


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]

