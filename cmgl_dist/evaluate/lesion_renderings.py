"""More phantom renderings of the evaluated split's positive reports, so that every finding has
enough lesion masks to judge localisation by.

IU-RR is small where it matters: a 20% test split holds a handful of consolidation and edema
reports, so their pointing game is a ratio of single digits. A phantom is drawn from its report's
uid and the pack's seed (`shards.phantom.phantom_for_report`); the same report drawn with seed
`pack seed + r` (r = 1, 2, ...) is another patient with the same findings: other anatomy, other
lesion placement and size, another mask. Rendering r of a report is paired with that report's own
text, exactly as the packed sample is; only its image is new, encoded here through the
evaluation transform (`cmgl_dist.data.images`: square resize, centre crop, normalisation), and
PNG packing is lossless, so rendering 0 equals the packed image.

A finding gets renderings until it has `eval.localisation_min_masks` scored masks (masks inside
the centre crop whose report names the finding with a finding word: the paired protocol's
scored masks), report by report in the split's order, at most `MAX_RENDERINGS` per report.
Renderings of one report are not independent samples: the bootstrap of `localisation` resamples
reports, not masks.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from cmgl_dist.data import images, shard_urls
from cmgl_dist.shards.manifest import read_manifest
from cmgl_dist.shards.phantom import phantom_for_report
from cmgl_dist.shards.schema import LABELS, META, PATHOLOGIES

log = logging.getLogger(__name__)

MAX_RENDERINGS = 40  # per report and finding: 4 consolidation reports x 40 is plenty
ENCODE_BATCH = 16


class Lesion(NamedTuple):
    """One lesion to score: its finding, the feature row of the report whose words describe it,
    its mask in the eval view [crop, crop], the image's regions [R, D] (None: the row's own
    packed image) and the report it came from (the bootstrap's resampling unit)."""
    pathology: str
    row: int
    mask: torch.Tensor
    regions: Optional[torch.Tensor] = None
    report: str = ""


class PhantomReport(NamedTuple):
    uid: str
    labels: dict
    mesh_major: list


def phantom_reports(shards: str, split: str) -> dict[str, PhantomReport]:
    """key -> what its phantom was drawn from, for the samples of `split` with phantom images."""
    out = {}
    for sample in wds.WebDataset(shard_urls(shards, split), shardshuffle=False, empty_check=False):
        if META not in sample or LABELS not in sample:
            continue
        meta, labels = json.loads(sample[META]), json.loads(sample[LABELS])
        if meta.get("image_source") == "phantom":
            out[sample["__key__"]] = PhantomReport(meta["uid"], labels, list(meta.get("mesh_major", [])))
    return out


def pack_rendering(shards: str) -> Optional[tuple[int, int]]:
    """(image_size, seed) the pack drew its phantoms with; None when it holds no phantoms or its
    manifest cannot say (a remote pack, another corpus)."""
    if "://" in str(shards) or not (Path(shards) / "manifest.json").is_file():
        return None
    manifest = read_manifest(shards)
    inputs = manifest.get("inputs", {})
    arguments = inputs.get("arguments", {})
    if inputs.get("images") != "phantom" or "image_size" not in arguments or "seed" not in arguments:
        return None
    return int(arguments["image_size"]), int(arguments["seed"])


def more_renderings(ctx, feats, found: list[Lesion], scorable, minimum: int) -> list[Lesion]:
    """Lesions from renderings 1, 2, ... of the split's positive reports, for every finding with
    fewer than `minimum` scorable masks in `found`; `scorable(row, pathology)` says whether a
    report's words can be scored (the paired protocol)."""
    drawn = pack_rendering(ctx.shards)
    if minimum <= 0 or drawn is None:
        return []
    have = {p: sum(1 for lesion in found if lesion.pathology == p and scorable(lesion.row, p)) for p in PATHOLOGIES}
    short = [p for p in PATHOLOGIES if have[p] < minimum]
    if not short:
        return []
    reports = phantom_reports(ctx.shards, ctx.split)
    row_of = {key: i for i, key in enumerate(feats.keys)}
    out: list[Lesion] = []
    for pathology in short:
        candidates = [(key, row_of[key]) for key, report in reports.items()
                      if key in row_of and report.labels.get(pathology) and scorable(row_of[key], pathology)]
        added = list(_renderings(ctx, pathology, candidates, reports, drawn, minimum - have[pathology]))
        log.info("localisation: %s had %d scorable masks; %d more from renderings of %d reports",
                 pathology, have[pathology], len(added), len(candidates))
        out += added
    return out


def _renderings(ctx, pathology: str, candidates: list[tuple[str, int]], reports: dict[str, PhantomReport],
                drawn: tuple[int, int], needed: int) -> Iterator[Lesion]:
    """Up to `needed` lesions of `pathology`: rendering 1 of every candidate, then rendering 2, ..."""
    size, seed = drawn
    data = ctx.cfg.data
    pending: list[tuple[str, int, torch.Tensor, torch.Tensor]] = []
    given = 0
    for rendering in range(1, MAX_RENDERINGS + 1):
        for key, row in candidates:
            if given + len(pending) >= needed:
                break
            report = reports[key]
            image, masks, _ = phantom_for_report(report.uid, report.labels, report.mesh_major, size, seed + rendering)
            if pathology not in masks:
                continue
            mask = mask_to_view(masks[pathology], data)
            if mask.any():
                pending.append((key, row, mask, images.eval_image(Image.fromarray(image, mode="L"), data)))
            if len(pending) == ENCODE_BATCH:
                given += len(pending)
                yield from _encoded(ctx, pathology, pending)
                pending = []
        if given + len(pending) >= needed:
            break
    yield from _encoded(ctx, pathology, pending)


def mask_to_view(mask: np.ndarray, data_cfg) -> torch.Tensor:
    """bool [H, W] at the stored resolution -> bool [crop, crop] aligned with the eval image."""
    grey = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    square = images.square_resize(grey, data_cfg.image_size, data_cfg.resize)
    return images.eval_view(square, data_cfg.crop_size)[0] > 0.5


@torch.inference_mode()
def _encoded(ctx, pathology: str, pending: list) -> Iterator[Lesion]:
    if not pending:
        return
    from cmgl_dist.evaluate.features import eval_device

    device = eval_device()
    model = ctx.model.to(device).eval()
    _, regions = model.encode_image(torch.stack([p[3] for p in pending]).to(device))
    for (key, row, mask, _), r in zip(pending, regions.float().cpu()):
        yield Lesion(pathology, row, mask, r, key)

