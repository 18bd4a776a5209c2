"""The one record every corpus source yields, and the label rules the sources share.

A source module (`nih`, `chexpert`, `mimic`, `padchest`, `generic_csv`) reads its corpus's own
folder and CSV layout and yields `CorpusRecord`s: one frontal image with its five harmonised
labels + normal, patient, view, language, optional report text and, where the corpus has one,
its official split. Everything after that (patient splits, shards, manifest) is source-agnostic.
"""
from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from cmgl_dist.shards.keys import safe_key
from cmgl_dist.shards.schema import LABEL_KEYS

UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")
FRONTAL_VIEWS = ("PA", "AP")


class SourceError(ValueError):
    """The corpus's files are missing or not in the layout the source expects."""


@dataclass(frozen=True)
class CorpusRecord:
    key: str               # shard sample key: "<source>_<id>", no '.' or '/'
    image: str             # absolute path of the image file
    labels: dict           # LABEL_KEYS -> 0/1
    patient: str
    view: str              # PA, AP, ... ('' when the corpus does not say)
    language: str          # ISO 639-1 of the text ('en', 'es')
    text: dict | None = None            # {"findings": ..., "impression": ...} or None
    official_split: str | None = None   # train/val/test when the corpus prescribes one
    uncertain: tuple[str, ...] = field(default_factory=tuple)  # labels the corpus marked -1
    image_ref: str = ""    # the image as the corpus names it (relative path or id)


@dataclass(frozen=True)
class SourceInput:
    images: Path           # the corpus's image folder (an archive is extracted first)
    labels: Path | None    # --labels, None: the source's default table
    reports: Path | None   # --reports
    uncertain: str = "zeros"


@dataclass
class Exclusions:
    """Rows and files a source leaves out by design, counted by reason (not listed one by one)."""
    counts: dict = field(default_factory=dict)

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self.counts[reason] = self.counts.get(reason, 0) + n


def sample_key(source: str, ident: str) -> str:
    """A WebDataset-safe key (`shards.keys`): '.' and '/' would split or nest the sample."""
    return safe_key(f"{source}_{ident}")


def read_table(path: str | Path) -> Iterator[dict]:
    """Rows of a CSV (gzip accepted) as dicts; the first column may be an unnamed index."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"label table {path} does not exist")
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    with (gzip.open if gzipped else open)(path, "rb") as f:
        yield from csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline=""))


def require_columns(path, row: dict | None, columns) -> None:
    missing = [c for c in columns if row is None or c not in row]
    if missing:
        raise SourceError(f"{path}: missing column(s) {', '.join(missing)}")


def chexpert_value(text: str | None, uncertain: str) -> int | None:
    """CheXpert/MIMIC label cell -> 0/1; None for an uncertain (-1) cell under `ignore`.

    1 positive, 0 negative, blank not mentioned (0), -1 uncertain: U-Ones (1), U-Zeros (0) or
    U-Ignore (None: the sample is left out, counted).
    """
    text = (text or "").strip()
    if text in ("", "nan"):
        return 0
    value = float(text)
    if value == -1:
        return {"ones": 1, "zeros": 0, "ignore": None}[uncertain]
    if value not in (0, 1):
        raise SourceError(f"label value {text!r} is not 1, 0, -1 or blank")
    return int(value)


# CheXpert / MIMIC-CXR (same CheXpert labeler columns) -> the five + normal.
CHEXPERT_COLUMNS = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "edema": "Edema",
                    "pleural_effusion": "Pleural Effusion", "consolidation": "Consolidation",
                    "normal": "No Finding"}


def chexpert_labels(row: dict, uncertain: str, excluded: Exclusions, columns: dict = CHEXPERT_COLUMNS
                    ) -> tuple[dict, tuple[str, ...]] | None:
    """(labels, labels marked uncertain), or None (counted in `excluded`) when `ignore` meets an
    uncertain cell. `columns` maps each label key to its column (a missing `normal` reads as blank)."""
    labels, unsure = {}, []
    for key in LABEL_KEYS:
        cell = row.get(columns[key])
        if (cell or "").strip() in ("-1", "-1.0"):
            unsure.append(key)
        value = chexpert_value(cell, uncertain)
        if value is None:
            excluded.add("uncertain label (--uncertain ignore)")
            return None
        labels[key] = value
    return labels, tuple(unsure)
