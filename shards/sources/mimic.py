"""MIMIC-CXR-JPG 2.0.0 (Johnson et al., 2019): 377,110 JPEGs of 65,379 patients, with reports.

Layout under --images: `files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg` and, beside `files/` (or
in it), `mimic-cxr-2.0.0-chexpert.csv[.gz]` (study labels, by `subject_id`, `study_id`; or
--labels), `mimic-cxr-2.0.0-metadata.csv[.gz]` (`dicom_id` -> `ViewPosition`) and
`mimic-cxr-2.0.0-split.csv[.gz]` (the official train/validate/test split per image). Reports:
`files/pNN/pNNNNNNNN/sNNNNNNNN.txt` under --images or --reports (MIMIC-CXR's report layout);
FINDINGS and IMPRESSION sections are kept. Labels as CheXpert (same labeler, same columns).
Only PA/AP images are packed when the metadata is there; without it every image is, view ''.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from cmgl_dist.shards.sources.record import (CHEXPERT_COLUMNS, FRONTAL_VIEWS, CorpusRecord, Exclusions, SourceError,
                                             SourceInput, chexpert_labels, read_table, require_columns, sample_key)

NAME = "mimic"
_IMAGE = re.compile(r"p\d+/p(\d+)/s(\d+)/([^/]+)\.jpg$")
_SECTION = re.compile(r"^\s*([A-Z][A-Z /&]+):", re.MULTILINE)
SPLITS = {"train": "train", "validate": "val", "test": "test"}


def _beside(images: Path, stem: str) -> Path | None:
    for folder in (images, images / "files", images.parent):
        for suffix in (".csv", ".csv.gz"):
            if (folder / (stem + suffix)).is_file():
                return folder / (stem + suffix)
    return None


def report_sections(text: str) -> dict:
    """FINDINGS and IMPRESSION of a MIMIC-CXR report, whitespace-normalised ('' when absent)."""
    sections, heads = {"findings": "", "impression": ""}, list(_SECTION.finditer(text))
    for head, following in zip(heads, heads[1:] + [None]):
        name = head.group(1).strip().lower()
        if name in sections:
            end = following.start() if following else len(text)
            sections[name] = " ".join(text[head.end():end].split())
    return sections


def _study_labels(table: Path, excluded: Exclusions) -> dict:
    labels = {}
    for row in read_table(table, excluded):
        require_columns(table, row, ("subject_id", "study_id", *CHEXPERT_COLUMNS.values()))
        labels[(row["subject_id"], row["study_id"])] = row
    return labels


def _column(table: Path | None, key: str, value: str, excluded: Exclusions) -> dict:
    if table is None:
        return {}
    out = {}
    for row in read_table(table, excluded):
        require_columns(table, row, (key, value))
        out[row[key]] = row[value]
    return out


def _report(roots: list[Path], relative_study: Path) -> dict | None:
    for root in roots:
        path = root / relative_study.with_suffix(".txt")
        if path.is_file():
            sections = report_sections(path.read_text(errors="replace"))
            return sections if sections["findings"] or sections["impression"] else None
    return None


def records(inputs: SourceInput, excluded: Exclusions) -> Iterator[CorpusRecord]:
    table = inputs.labels or _beside(inputs.images, "mimic-cxr-2.0.0-chexpert")
    if table is None:
        raise SourceError(f"no mimic-cxr-2.0.0-chexpert.csv[.gz] in or beside {inputs.images}: pass --labels")
    studies = _study_labels(Path(table), excluded)
    views = _column(_beside(inputs.images, "mimic-cxr-2.0.0-metadata"), "dicom_id", "ViewPosition", excluded)
    splits = _column(_beside(inputs.images, "mimic-cxr-2.0.0-split"), "dicom_id", "split", excluded)
    report_roots = [r for r in (inputs.reports, inputs.images, inputs.images.parent) if r is not None]
    for path in sorted(inputs.images.rglob("*.jpg")):
        match = _IMAGE.search(path.as_posix())
        if match is None:
            excluded.add("not files/pNN/pN/sN/*.jpg")
            continue
        subject, study, dicom = match.groups()
        view = views.get(dicom, "").strip().upper()
        if views and view not in FRONTAL_VIEWS:
            excluded.add("not frontal")
            continue
        row = studies.get((subject, study))
        if row is None:
            excluded.add("image without a label row")
            continue
        harmonised = chexpert_labels(row, inputs.uncertain, excluded)
        if harmonised is None:
            continue
        labels, unsure = harmonised
        study_dir = Path(*Path(match.group(0)).parts[:3])
        yield CorpusRecord(key=sample_key(NAME, dicom), image=str(path), labels=labels, patient=subject, view=view,
                           language="en", text=_report([r / "files" for r in report_roots] + report_roots, study_dir),
                           official_split=SPLITS.get(splits.get(dicom, ""), None), uncertain=unsure,
                           image_ref=match.group(0))
