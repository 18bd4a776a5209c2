"""Any corpus described by one CSV (`--source csv --labels CSV --images ROOT`).

Columns: `path` (image file, relative to --images, or absolute) and the five label columns
`atelectasis, cardiomegaly, edema, pleural_effusion, consolidation` are required; `normal`,
`text` (the report), `patient_id` (default: the image path, so each image is its own patient),
`view`, `language` (default 'en') and `split` (train/val/test, an official split) are optional.
Label cells follow the CheXpert convention: 1, 0, blank (not mentioned = 0), -1 uncertain by
--uncertain.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from cmgl_dist.shards.schema import LABEL_KEYS, PATHOLOGIES, SPLITS
from cmgl_dist.shards.sources.record import (CorpusRecord, Exclusions, SourceError, SourceInput, chexpert_labels,
                                             read_table, require_columns, sample_key)

NAME = "csv"
COLUMNS = {key: key for key in LABEL_KEYS}


def records(inputs: SourceInput, excluded: Exclusions) -> Iterator[CorpusRecord]:
    if inputs.labels is None:
        raise SourceError("--source csv needs --labels CSV (columns: path, the five pathologies, optional text)")
    for row in read_table(inputs.labels, excluded):
        require_columns(inputs.labels, row, ("path", *PATHOLOGIES))
        image = inputs.images / row["path"]
        if not image.is_file():
            excluded.add("label row without image")
            continue
        harmonised = chexpert_labels(row, inputs.uncertain, excluded, COLUMNS)
        if harmonised is None:
            continue
        labels, unsure = harmonised
        split = (row.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            raise SourceError(f"{row.where('split')}: {split!r} is not one of {SPLITS}")
        text = (row.get("text") or "").strip()
        yield CorpusRecord(key=sample_key(NAME, str(Path(row["path"]).with_suffix(""))), image=str(image),
                           labels=labels, patient=(row.get("patient_id") or "").strip() or row["path"],
                           view=(row.get("view") or "").strip().upper(), language=(row.get("language") or "en").strip(),
                           text={"findings": text, "impression": ""} if text else None, official_split=split,
                           uncertain=unsure, image_ref=row["path"])
