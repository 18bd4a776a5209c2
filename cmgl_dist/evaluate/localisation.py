"""Localisation on phantom data: does the word->region attention land on the lesion?

Phantom images carry `masks.npz`, one bool mask per present finding at the stored image's
resolution. For every test sample with a mask of pathology p, a heatmap is made from the words
that name p (`prompts.FINDING_WORDS`: "effusion", "cardiomegaly", ...), two ways:
- paired report (the primary protocol, GLoRIA's attention maps): the finding words of the
  image's own report, attending over the image's regions with the rest of that report. A mask
  whose report names p with none of these words cannot be scored so; it is counted as
  `unscored`, per pathology;
- class prompts: the finding words of the zero-shot class prompts, averaged over the prompts.
  A prompt has a handful of words, so its finding word takes most of every region (below) and
  the map is flatter than the report's.
Each heatmap is upsampled to the crop and scored two ways:
- mass: the share of attention inside the mask;
- pointing game: whether the map's maximum falls inside the mask.
Both have the same chance level, the mask's share of the crop (a uniform map's mass; the hit
rate of a peak placed at random), reported beside them as `mask_share`, and both come with a
percentile-bootstrap 95% interval (`mass_ci`, `pointing_ci`) over reports: the masks of one
report (its renderings, `lesion_renderings`) are resampled together.
A finding with fewer than `eval.localisation_min_masks` scorable masks in the split gets more
renderings of its positive reports (`lesion_renderings`): IU-RR's test split holds a handful of
consolidation reports.

Only the finding words are scored: GLoRIA's attention first shares each region among the text's
words (softmax over words, so the shares of a region sum to 1), and the mean of every word's map
is therefore close to uniform whatever the model learnt.
Masks go through the eval image transform (`cmgl_dist.data.images`: longest side to
data.image_size, centred zero-padding to a square, centre crop), so they align with the
pixels the model saw; a lesion outside the centre crop is not counted at all.
"""
from __future__ import annotations

import io
import math
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from webdataset.handlers import reraise_exception

from cmgl_dist.data import shard_urls, tokenize_texts
from cmgl_dist.evaluate.lesion_renderings import Lesion, mask_to_view, more_renderings
from cmgl_dist.shards.remote import tar_samples
from cmgl_dist.shards.schema import MASKS, PATHOLOGIES


def read_masks(shards: str, split: str) -> dict[str, dict[str, np.ndarray]]:
    """key -> {pathology: bool mask} for the samples of `split` that carry masks."""
    out = {}
    for url in shard_urls(shards, split):
        stream, samples = tar_samples(url, reraise_exception)
        with stream:
            for sample in samples:
                if MASKS in sample:
                    with np.load(io.BytesIO(sample[MASKS]), allow_pickle=False) as npz:
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
    """Per-pathology and overall mean mass, pointing-game accuracy and chance level, for the
    paired reports ("localisation", with `unscored` counts) and the class prompts."""
    from cmgl_dist.evaluate.prompts import class_prompts

    feats = ctx.features(with_text=True)
    prompts = class_prompts(ctx.settings.n_prompts, seed=0, vocabulary=ctx.settings.prompts)
    prompt_words = {p: finding_word_rows(ctx.model, prompts[p], p, ctx.cfg.data) for p in PATHOLOGIES}
    found = list(lesions(ctx, feats))
    found += more_renderings(ctx, feats, found, lambda row, p: has_finding_word(feats, row, p),
                             ctx.settings.localisation_min_masks)
    return score_lesions(found, feats, prompt_words, ctx.attention, ctx.settings.bootstrap)


def score_lesions(found: Iterable[tuple], feats, prompt_words: dict, attention: Callable,
                  bootstrap: int = 1000) -> dict:
    """Both protocols over `found` lesions (`Lesion`s, or (pathology, feature row, mask) for the
    row's own image); `prompt_words` as `finding_word_rows` gives per pathology;
    `attention(words, regions) -> [W, R]`; `bootstrap` resamples for the intervals."""
    report_rows, prompt_rows = _empty(), _empty()
    unscored = dict.fromkeys(PATHOLOGIES, 0)
    for lesion in found:
        pathology, row, mask, regions, report = Lesion(*lesion)
        regions = feats.regions[row] if regions is None else regions
        report = report or feats.keys[row]
        share = float(mask.float().mean())
        prompt_map = prompt_attention(*prompt_words[pathology], regions, attention)
        prompt_rows[pathology].append((*_score(prompt_map, mask), share, report))
        report_map = paired_report_attention(feats, row, pathology, attention, regions)
        if report_map is None:
            unscored[pathology] += 1
        else:
            report_rows[pathology].append((*_score(report_map, mask), share, report))
    return {"localisation": _summary(report_rows, bootstrap, unscored),
            "localisation_prompts": _summary(prompt_rows, bootstrap)}


def lesions(ctx, feats) -> Iterator[Lesion]:
    """A `Lesion` for every packed lesion of the split inside the centre crop."""
    masks = read_masks(ctx.shards, ctx.split)
    if not masks:
        raise ValueError(f"no {ctx.split} sample in {ctx.shards} carries {MASKS}: "
                         "localisation needs phantom images (pack with phantom images)")
    row_of = {key: i for i, key in enumerate(feats.keys)}
    data = ctx.cfg.data
    found = False
    for pathology in PATHOLOGIES:
        for key, sample_masks in masks.items():
            if pathology not in sample_masks or key not in row_of:
                continue
            mask = mask_to_view(sample_masks[pathology], data)
            if mask.any():
                found = True
                yield Lesion(pathology, row_of[key], mask)
    if not found:
        raise ValueError("no lesion mask falls inside the centre crop of any test sample")


def paired_report_attention(feats, row: int, pathology: str, attention: Callable,
                            regions: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """[R]: the mean attention of the words of sample `row`'s own report that name `pathology`
    (attending beside all of that report's words) over `regions` (default: the row's own image),
    or None when the report has none of them."""
    from cmgl_dist.evaluate.prompts import finding_word_positions

    words, strings = feats.text_words(row)
    rows = finding_word_positions(strings, pathology)
    if not rows:
        return None
    return attention(words, feats.regions[row] if regions is None else regions)[rows].mean(0)


def has_finding_word(feats, row: int, pathology: str) -> bool:
    """Whether sample `row`'s report can be scored by the paired protocol for `pathology`."""
    from cmgl_dist.evaluate.prompts import finding_word_positions

    return bool(finding_word_positions(feats.word_strings[row], pathology))


def prompt_attention(words: list[torch.Tensor], rows: list[list[int]], regions: torch.Tensor,
                     attention: Callable) -> torch.Tensor:
    """[R]: the finding words' attention averaged within each prompt, then over the prompts."""
    return torch.stack([attention(w, regions)[r].mean(0) for w, r in zip(words, rows)]).mean(0)


def _score(attention: torch.Tensor, mask: torch.Tensor) -> tuple[float, bool]:
    return score_map(attention_heatmap(attention, mask.shape[-1]), mask)


def _empty() -> dict[str, list]:
    return {p: [] for p in PATHOLOGIES}


def finding_word_rows(model, prompts: list[str], pathology: str, data_cfg) -> tuple[list, list]:
    """([real words [W, D] per prompt], [indices of the words naming `pathology` per prompt]).

    Prompts without such a word are dropped; every pathology's prompt set has some."""
    from cmgl_dist.evaluate.prompts import FINDING_WORDS, finding_word_positions
    from cmgl_dist.evaluate.zero_shot import encode_texts

    _, words, word_mask = encode_texts(model, prompts, data_cfg.max_length, data_cfg.special_words)
    strings = tokenize_texts(model.tokenizer, prompts, data_cfg.max_length, data_cfg.special_words)["words"]
    kept_words, kept_rows = [], []
    for w, m, names in zip(words, word_mask, strings):
        rows = finding_word_positions(names, pathology)
        if rows:
            kept_words.append(w[m].cpu())
            kept_rows.append(rows)
    if not kept_words:
        raise ValueError(f"no prompt for {pathology} contains one of {sorted(FINDING_WORDS[pathology])}")
    return kept_words, kept_rows


def _summary(rows: dict[str, list], bootstrap: int, unscored: Optional[dict[str, int]] = None) -> dict:
    """pathology (those with a lesion) and "all" -> n, reports, mass, pointing, mask_share and
    their intervals (None when nothing was scored) and, given `unscored`, the masks that could not
    be scored."""
    everything = [x for r in rows.values() for x in r]
    out = {}
    for name, scored in [*rows.items(), ("all", everything)]:
        missed = None if unscored is None else sum(unscored.values()) if name == "all" else unscored[name]
        if scored or missed:
            out[name] = _summarise(scored, bootstrap) | ({} if missed is None else {"unscored": missed})
    return out


def _summarise(rows: list[tuple[float, bool, float, str]], bootstrap: int) -> dict:
    if not rows:
        return {"n": 0, "reports": 0, "mass": None, "pointing": None, "mask_share": None,
                "mass_ci": None, "pointing_ci": None, "mask_share_ci": None}
    mass, hit, share = (np.asarray(c, float) for c in list(zip(*rows))[:3])
    reports = [r[3] for r in rows]
    intervals = report_bootstrap(np.stack([mass, hit, share]), reports, bootstrap)
    return {"n": len(rows), "reports": len(set(reports)), "mass": float(mass.mean()), "pointing": float(hit.mean()),
            "mask_share": float(share.mean()), "mass_ci": intervals[0], "pointing_ci": intervals[1],
            "mask_share_ci": intervals[2]}


def report_bootstrap(values: np.ndarray, reports: list[str], resamples: int, seed: int = 0) -> list:
    """Percentile 95% intervals [low, high] of the means of `values` [K, N] over a bootstrap that
    draws reports (each with all of its masks), not masks; None per row when `resamples` is 0."""
    if resamples <= 0:
        return [None] * len(values)
    units, unit_of = np.unique(np.asarray(reports), return_inverse=True)
    sums = np.stack([np.bincount(unit_of, weights=row, minlength=len(units)) for row in values])
    counts = np.bincount(unit_of, minlength=len(units)).astype(float)
    draws = np.random.default_rng(seed).integers(0, len(units), size=(resamples, len(units)))
    weights = np.stack([np.bincount(d, minlength=len(units)) for d in draws]).astype(float)  # [B, U]
    means = (weights @ sums.T) / (weights @ counts)[:, None]  # [B, K]
    return [[float(low), float(high)] for low, high in np.percentile(means, [2.5, 97.5], axis=0).T]
