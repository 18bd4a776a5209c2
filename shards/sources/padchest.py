"""PadChest (Bustos et al., 2020): 160,868 images of 67,000 patients, Spanish reports, Alicante.

Layout: `<ImageDir>/<ImageID>.png` (or flat) under --images. Table: `PADCHEST_chest_x_ray_images_labels
_160K_01.02.19.csv[.gz]` (default: torchxrayvision's copy): `ImageID`, `PatientID`, `Projection`
(PA, AP, AP_horizontal are frontal; L, COSTAL, EXCLUDE, UNK are not packed), `Report` (the
Spanish report, as PadChest publishes it: lower-cased, stemmed) and `Labels` (a Python-list string
of UMLS-derived terms). Harmonisation by term: atelectasis = any term containing 'atelectasis'
(laminar, lobar, segmental, basal, total, round); cardiomegaly; edema = 'pulmonary edema';
pleural effusion = 'pleural effusion', 'loculated pleural effusion', 'loculated fissural
effusion' (not 'pericardial effusion'); consolidation; normal = 'normal'. No official split.
The report goes to `findings` (PadChest does not separate sections); language 'es'.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

from cmgl_dist.shards.download import packaged_file
from cmgl_dist.shards.schema import LABEL_KEYS
from cmgl_dist.shards.sources.record import (CorpusRecord, Exclusions, SourceError, SourceInput, read_table,
                                             require_columns, sample_key)

NAME = "padchest"
TABLE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
FRONTAL_PROJECTIONS = ("PA", "AP", "AP_HORIZONTAL")
MAX_TERMS_CELL = 10_000  # characters; PadChest's longest Labels cell is a few hundred
EFFUSION_TERMS = ("pleural effusion", "loculated pleural effusion", "loculated fissural effusion")


def padchest_labels(terms: set[str]) -> dict:
    found = {
        "atelectasis": any("atelectasis" in t for t in terms),
        "cardiomegaly": "cardiomegaly" in terms,
        "edema": "pulmonary edema" in terms,
        "pleural_effusion": any(t in terms for t in EFFUSION_TERMS),
        "consolidation": "consolidation" in terms,
        "normal": "normal" in terms,
    }
    return {key: int(found[key]) for key in LABEL_KEYS}


def parse_terms(cell: str) -> set[str] | None:
    """"['normal', 'cardiomegaly']" -> {'normal', 'cardiomegaly'}; None when unparsable."""
    text = (cell or "").strip() or "[]"
    if len(text) > MAX_TERMS_CELL:
        return None
    try:
        terms = ast.literal_eval(text)
    except (ValueError, SyntaxError, RecursionError, MemoryError):  # deep nesting: bounded, not a crash
        return None
    return {str(t).strip().lower() for t in terms} if isinstance(terms, list) else None


def records(inputs: SourceInput, excluded: Exclusions) -> Iterator[CorpusRecord]:
    table = inputs.labels or packaged_file(TABLE)
    if table is None:
        raise SourceError(f"no --labels and no {TABLE} in torchxrayvision: pass PadChest's label CSV")
    files = {p.name: p for p in sorted(inputs.images.rglob("*.png"))}
    seen = set()
    for row in read_table(table, excluded):
        require_columns(table, row, ("ImageID", "PatientID", "Projection", "Report", "Labels"))
        name = row["ImageID"]
        if name not in files:
            excluded.add("label row without image")
            continue
        seen.add(name)
        if row["Projection"].strip().upper() not in FRONTAL_PROJECTIONS:
            excluded.add("not frontal")
            continue
        terms = parse_terms(row["Labels"])
        if terms is None:
            excluded.add("unparsable Labels cell")
            continue
        report = " ".join((row["Report"] or "").split())
        yield CorpusRecord(key=sample_key(NAME, Path(name).stem), image=str(files[name]), labels=padchest_labels(terms),
                           patient=row["PatientID"].strip(), view=row["Projection"].strip().upper(), language="es",
                           text={"findings": report, "impression": ""} if report else None, image_ref=name)
    excluded.add("image not in the label table", len(set(files) - seen))
