"""Localisation on phantom data: does the word->region attention land on the lesion?

For every test sample with a lesion mask (phantom images carry `masks.npz`, one bool mask per
present finding at the stored image's resolution), the class prompts' words attend over the
image's regions (GLoRIA attention); the map of the words that name the finding
(`prompts.FINDING_WORDS`: "effusion", "cardiomegaly", ...), averaged over those words and the
prompts, is upsampled to the crop and scored two ways:
- mass: the share of attention inside the mask;
- pointing game: whether the map's maximum falls inside the mask.
Both have the same chance level, the mask's share of the crop (a uniform map's mass; the hit
rate of a peak placed at random), reported beside them as `mask_share`.

Only the finding words are scored: GLoRIA's attention first shares each region among the text's
words (softmax over words, so the shares of a region sum to 1), and the mean of every word's map
is therefore close to uniform whatever the model learnt.
Masks go through the eval image transform (`cmgl_dist.data.images`: longest side to
data.image_size, centred zero-padding to a square, centre crop), so they align with the
pixels the model saw.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from cmgl_dist.data import images, shard_urls
from cmgl_dist.shards.schema import MASKS, PATHOLOGIES


def mask_to_view(mask: np.ndarray, image_size: int, crop_size: int) -> torch.Tensor:
    """bool [H, W] at the stored resolution -> bool [crop, crop] aligned with the eval image."""
    grey = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    return images.eval_view(images.square_resize(grey, image_size), crop_size)[0] > 0.5


def read_masks(shards: str, split: str) -> dict[str, dict[str, np.ndarray]]:
    """key -> {pathology: bool mask} for the samples of `split` that carry masks."""
    out = {}
    for sample in wds.WebDataset(shard_urls(shards, split), shardshuffle=False, empty_check=False):
        if MASKS in sample:
            with np.load(io.BytesIO(sample[MASKS])) as npz:
                found = {name: npz[name].astype(bool) for name in npz.files if name in PATHOLOGIES}
            if found:
                out[sample["__key__"]] = found
    return out


def attention_heatmap(attention: torch.Tensor, crop_size: int) -> torch.Tensor:
    """[R] attention over a square grid of regions -> [crop, crop] map summing to 1."""
    side = math.isqrt(attention.numel())
    if side * side != attention.numel():
        raise ValueError(f"{attention.numel()} regions do not form a square grid")
    grid = attention.view(1, 1, side, side).float()
    up = F.interpolate(grid, size=(crop_size, crop_size), mode="bilinear", align_corners=False)[0, 0]
    return up / up.sum()


def score_map(heatmap: torch.Tensor, mask: torch.Tensor) -> tuple[float, bool]:
    """(attention mass inside the mask, whether the maximum is inside)."""
    return float(heatmap[mask].sum()), bool(mask.view(-1)[heatmap.argmax()])


def localisation_scores(ctx) -> dict:
    """Per-pathology and overall mean mass, pointing-game accuracy and chance level."""
    from cmgl_dist.evaluate.prompts import class_prompts

    cfg = ctx.cfg
    masks = read_masks(ctx.shards, ctx.split)
    if not masks:
        raise ValueError(f"no {ctx.split} sample in {ctx.shards} carries {MASKS}: "
                         "localisation needs phantom images (pack with phantom images)")
    feats = ctx.features(with_text=True)
    row_of = {key: i for i, key in enumerate(feats.keys)}
    prompts = class_prompts(ctx.settings.n_prompts, seed=0)
    rows: dict[str, list[tuple[float, bool, float]]] = {p: [] for p in PATHOLOGIES}
    for pathology in PATHOLOGIES:
        words, finding = finding_word_rows(ctx.model, prompts[pathology], pathology, cfg.data)
        for key, sample_masks in masks.items():
            if pathology not in sample_masks or key not in row_of:
                continue
            mask = mask_to_view(sample_masks[pathology], cfg.data.image_size, cfg.data.crop_size)
            if not mask.any():
                continue  # the lesion lies outside the centre crop
            regions = feats.regions[row_of[key]]
            attention = torch.stack([ctx.attention(w, regions)[rows].mean(0)
                                     for w, rows in zip(words, finding)])
            heatmap = attention_heatmap(attention.mean(0), cfg.data.crop_size)
            mass, hit = score_map(heatmap, mask)
            rows[pathology].append((mass, hit, float(mask.float().mean())))
    summary = {p: _summarise(r) for p, r in rows.items() if r}
    everything = [x for r in rows.values() for x in r]
    if not everything:
        raise ValueError("no lesion mask falls inside the centre crop of any test sample")
    summary["all"] = _summarise(everything)
    return {"localisation": summary}


def finding_word_rows(model, prompts: list[str], pathology: str, data_cfg) -> tuple[list, list]:
    """([real words [W, D] per prompt], [indices of the words naming `pathology` per prompt]).

    Prompts without such a word are dropped; every pathology's prompt set has some."""
    from cmgl_dist.data import tokenize_texts
    from cmgl_dist.evaluate.prompts import FINDING_WORDS
    from cmgl_dist.evaluate.zero_shot import encode_texts

    _, words, word_mask = encode_texts(model, prompts, data_cfg.max_length, data_cfg.special_words)
    strings = tokenize_texts(model.tokenizer, prompts, data_cfg.max_length, data_cfg.special_words)["words"]
    kept_words, kept_rows = [], []
    for w, m, names in zip(words, word_mask, strings):
        rows = [i for i, name in enumerate(names) if name.lower() in FINDING_WORDS[pathology]]
        if rows:
            kept_words.append(w[m].cpu())
            kept_rows.append(rows)
    if not kept_words:
        raise ValueError(f"no prompt for {pathology} contains one of {sorted(FINDING_WORDS[pathology])}")
    return kept_words, kept_rows


def _summarise(rows: list[tuple[float, bool, float]]) -> dict:
    mass, hit, share = (np.asarray(c, float) for c in zip(*rows))
    return {"n": len(rows), "mass": float(mass.mean()), "pointing": float(hit.mean()),
            "mask_share": float(share.mean())}
