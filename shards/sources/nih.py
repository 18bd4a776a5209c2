"""NIH ChestX-ray14 (Wang et al., CVPR 2017): 112,120 frontal PNGs, labels only, no reports.

Layout: `images*/<patient>_<followup>.png` anywhere under --images. Labels: `Data_Entry_2017_v2020.csv`
(gzip accepted; default: the copy inside `torchxrayvision`): `Image Index`, `Finding Labels`
('|'-separated), `Patient ID`, `View Position`. Harmonisation: Atelectasis, Cardiomegaly,
Edema, Consolidation by name; `Effusion` is pleural effusion; `No Finding` is normal; the other
nine findings set none of the five. NIH's official test split (`test_list.txt`, image names
one a line) is used when it sits in --images or beside the label table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from cmgl_dist.shards.download import packaged_file
from cmgl_dist.shards.schema import LABEL_KEYS
from cmgl_dist.shards.sources.record import (CorpusRecord, Exclusions, SourceError, SourceInput, read_table,
                                             require_columns, sample_key)

NAME = "nih"
TABLE = "Data_Entry_2017_v2020.csv.gz"
FINDINGS = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "edema": "Edema",
            "pleural_effusion": "Effusion", "consolidation": "Consolidation", "normal": "No Finding"}


def nih_labels(finding_labels: str) -> dict:
    found = {f.strip() for f in finding_labels.split("|")}
    return {key: int(FINDINGS[key] in found) for key in LABEL_KEYS}


def _official_test(inputs: SourceInput, table: Path) -> set[str] | None:
    for folder in (inputs.images, table.parent):
        listed = folder / "test_list.txt"
        if listed.is_file():
            return {line.strip() for line in listed.read_text().splitlines() if line.strip()}
    return None


def records(inputs: SourceInput, excluded: Exclusions) -> Iterator[CorpusRecord]:
    table = inputs.labels or packaged_file(TABLE)
    if table is None:
        raise SourceError(f"no --labels and no {TABLE} in torchxrayvision: pass NIH's Data_Entry_2017 CSV")
    files = {p.name: p for p in sorted(inputs.images.rglob("*.png"))}
    test = _official_test(inputs, Path(table))
    seen = set()
    first = True
    for row in read_table(table, excluded):
        if first:
            require_columns(table, row, ("Image Index", "Finding Labels", "Patient ID", "View Position"))
            first = False
        name = row["Image Index"]
        if name not in files:
            excluded.add("label row without image")
            continue
        seen.add(name)
        split = None if test is None else ("test" if name in test else None)
        yield CorpusRecord(key=sample_key(NAME, Path(name).stem), image=str(files[name]),
                           labels=nih_labels(row["Finding Labels"]), patient=row["Patient ID"].strip(),
                           view=row["View Position"].strip().upper(), language="en", official_split=split,
                           image_ref=name)
    excluded.add("image not in the label table", len(set(files) - seen))
