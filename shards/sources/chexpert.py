"""CheXpert (Irvin et al., AAAI 2019): 224,316 images of 65,240 patients, labels from reports.

Layout: `CheXpert-v1.0[-small]/{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg`;
--images is that folder or the one above it. Labels: `train.csv` and `valid.csv` inside it,
else --labels, else the `chexpert_train.csv.gz` shipped in torchxrayvision (train rows only).
Columns `Path`, `Frontal/Lateral`, `AP/PA` and the CheXpert labeler's 14 observations:
Atelectasis, Cardiomegaly, Edema, Consolidation, Pleural Effusion -> the five, `No Finding` ->
normal; 1 positive, 0 negative, blank not mentioned (0), -1 uncertain by --uncertain.
Only frontal images are packed. Rows from `valid.csv` (radiologist-labelled, 200 patients) are
the test split (CheXpert's test set is not public). Reports (CheXpert Plus): --reports CSV with
`path_to_image`, `section_findings`, `section_impression`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from cmgl_dist.shards.download import packaged_file
from cmgl_dist.shards.sources.record import (CHEXPERT_COLUMNS, CorpusRecord, Exclusions, SourceError, SourceInput, chexpert_labels,
                                             read_table, require_columns, sample_key)

NAME = "chexpert"
TABLE = "chexpert_train.csv.gz"
_PATIENT = re.compile(r"(patient\d+)/(study\d+)/([^/]+)\.\w+$")


def _tables(inputs: SourceInput) -> list[Path]:
    if inputs.labels:
        return [inputs.labels]
    for root in (inputs.images, *inputs.images.glob("CheXpert-v1.0*")):
        found = [root / n for n in ("train.csv", "valid.csv") if (root / n).is_file()]
        if found:
            return found
    shipped = packaged_file(TABLE)
    if shipped is None:
        raise SourceError("no train.csv/valid.csv under --images, no --labels and no torchxrayvision table")
    return [shipped]


def resolve(images: Path, corpus_path: str) -> Path | None:
    """The file of a table `Path` ('CheXpert-v1.0-small/train/...') under --images or inside it."""
    relative = Path(corpus_path)
    for candidate in (images / relative, images / Path(*relative.parts[1:])):
        if candidate.is_file():
            return candidate
    return None


def _within_corpus(path: str) -> str:
    """'CheXpert-v1.0-small/train/patient1/...' and 'train/patient1/...' -> 'train/patient1/...'."""
    return path.split("/", 1)[1] if path.startswith("CheXpert") else path


def reports_by_path(path: Path | None) -> dict[str, dict]:
    """CheXpert Plus report sections keyed by the image path as the label table writes it."""
    if path is None:
        return {}
    out = {}
    for row in read_table(path):
        require_columns(path, row, ("path_to_image", "section_findings", "section_impression"))
        text = {"findings": (row["section_findings"] or "").strip(),
                "impression": (row["section_impression"] or "").strip()}
        if text["findings"] or text["impression"]:
            out[_within_corpus(row["path_to_image"])] = text
    return out


def records(inputs: SourceInput, excluded: Exclusions) -> Iterator[CorpusRecord]:
    reports = reports_by_path(inputs.reports)
    for table in _tables(inputs):
        official = "test" if Path(table).name.startswith("valid") else None
        for row in read_table(table, excluded):
            require_columns(table, row, ("Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_COLUMNS.values()))
            match = _PATIENT.search(row["Path"])
            if match is None:
                raise SourceError(f"{row.where('Path')}: {row['Path']!r} is not .../patientN/studyN/viewN_*.jpg")
            if row["Frontal/Lateral"].strip() != "Frontal":
                excluded.add("not frontal")
                continue
            image = resolve(inputs.images, row["Path"])
            if image is None:
                excluded.add("label row without image")
                continue
            harmonised = chexpert_labels(row, inputs.uncertain, excluded)
            if harmonised is None:
                continue
            labels, unsure = harmonised
            patient, study, view = match.groups()
            relative = _within_corpus(row["Path"])
            yield CorpusRecord(key=sample_key(NAME, f"{Path(relative).parts[0]}_{patient}_{study}_{view}"),
                               image=str(image), labels=labels, patient=patient, view=row["AP/PA"].strip().upper(),
                               language="en", text=reports.get(relative), official_split=official,
                               uncertain=unsure, image_ref=row["Path"])
