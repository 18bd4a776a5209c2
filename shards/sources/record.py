"""The one record every corpus source yields, and the label rules the sources share.

A source module (`nih`, `chexpert`, `mimic`, `padchest`, `generic_csv`) reads its corpus's own
folder and CSV layout and yields `CorpusRecord`s: one frontal image with its five harmonised
labels + normal, patient, view, language, optional report text and, where the corpus has one,
its official split. Everything after that (patient splits, shards, manifest) is source-agnostic.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from cmgl_dist.shards.keys import safe_key
from cmgl_dist.shards.schema import LABEL_KEYS

log = logging.getLogger("cmgl.pack")

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


def distinct_keys(source: str, records: list[CorpusRecord]) -> list[CorpusRecord]:
    """`records` with one key each: distinct images whose ids map onto one key (`a.b.png` and
    `a_b.png`) get the key plus a hash of their own reference; one image listed twice is refused."""
    groups: dict[str, list[CorpusRecord]] = {}
    for record in records:
        groups.setdefault(record.key, []).append(record)
    renamed = {}
    for key, group in groups.items():
        if len(group) == 1:
            continue
        refs = [r.image_ref for r in group]
        if len(set(refs)) < len(refs):
            twice = sorted({ref for ref in refs if refs.count(ref) > 1})[:3]
            raise SourceError(f"--source {source}: image(s) {twice} listed twice; are two copies of the corpus "
                              "under --images, or a label table with repeated rows?")
        for record in group:
            digest = hashlib.sha256(record.image_ref.encode()).hexdigest()[:10]
            renamed[id(record)] = dataclasses.replace(record, key=safe_key(f"{key}_{digest}"))
    return [renamed.get(id(r), r) for r in records]


def sample_key(source: str, ident: str) -> str:
    """A WebDataset-safe key (`shards.keys`): '.' and '/' would split or nest the sample."""
    return safe_key(f"{source}_{ident}")


class Row(dict):
    """One table row, cells by column name, that knows where it came from (for messages)."""

    def __init__(self, cells: dict, path: Path, line: int):
        super().__init__(cells)
        self.path, self.line = path, line

    def where(self, column: str | None = None) -> str:
        return f"{self.path} line {self.line}" + (f", column {column!r}" if column is not None else "")


def where(row: dict, column: str | None = None) -> str:
    return row.where(column) if isinstance(row, Row) else f"column {column!r}"


def _text_lines(path: Path, raw) -> Iterator[str]:
    """The file's lines decoded as UTF-8 (a leading BOM dropped); SourceError naming the line if not."""
    for number, line in enumerate(raw, start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{path} line {number}: not UTF-8 (byte 0x{line[e.start]:02x} at offset {e.start}); "
                              "save the table as UTF-8") from None
        yield text.removeprefix("\ufeff") if number == 1 else text


def read_table(path: str | Path, excluded: Exclusions | None = None) -> Iterator[Row]:
    """Rows of a CSV (gzip accepted) as Rows; the first column may be an unnamed index.

    The one reader of label tables: a byte that is not UTF-8 or a field over the csv module's limit
    is a SourceError naming the file and line; a UTF-8 BOM is dropped; a row with more or fewer
    fields than the header is skipped and counted in `excluded` (logged with its line), or, without
    `excluded`, a SourceError.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"label table {path} does not exist")
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            reader = csv.reader(_text_lines(path, f))
            header = next(reader, None)
            if header is None:
                raise SourceError(f"label table {path} is empty")
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if len(cells) == len(header):
                    yield Row(zip(header, cells), path, line)
                elif cells:  # a blank line is no row
                    _malformed(path, line, len(cells), len(header), excluded)
    except csv.Error as e:
        raise SourceError(f"{path} line {reader.line_num}: {e} (not a CSV the packer can read)") from None
    except (OSError, EOFError, zlib.error) as e:
        raise SourceError(f"{path}: cannot read ({e})") from None


def _malformed(path: Path, line: int, fields: int, expected: int, excluded: Exclusions | None) -> None:
    problem = f"{path} line {line}: {fields} fields, the header has {expected}"
    if excluded is None:
        raise SourceError(f"{problem}; fix or remove the row")
    excluded.add("malformed table row")
    if excluded.counts["malformed table row"] <= 5:
        log.warning("%s: row skipped", problem)


def require_columns(path, row: dict | None, columns) -> None:
    missing = [c for c in columns if row is None or c not in row]
    if missing:
        raise SourceError(f"{path}: missing column(s) {', '.join(missing)}")


def chexpert_value(text: str | None, uncertain: str, row: dict | None = None, column: str | None = None) -> int | None:
    """CheXpert/MIMIC label cell -> 0/1; None for an uncertain (-1) cell under `ignore`.

    1 positive, 0 negative, blank not mentioned (0), -1 uncertain (any spelling: -1, -1.0, -1.00):
    U-Ones (1), U-Zeros (0) or U-Ignore (None: the sample is left out, counted). Anything else is
    a SourceError naming the file, line and column.
    """
    value = label_number(text, row, column)
    if value == -1:
        return {"ones": 1, "zeros": 0, "ignore": None}[uncertain]
    return int(value)


def label_number(text: str | None, row: dict | None = None, column: str | None = None) -> float:
    """A label cell as 1, 0 or -1 (blank and 'nan': 0)."""
    text = (text or "").strip()
    if text.lower() in ("", "nan"):
        return 0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0, 1, -1):
        raise SourceError(f"{where(row or {}, column)}: label value {text[:40]!r} is not 1, 0, -1 or blank")
    return value


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
        if label_number(cell, row, columns[key]) == -1:
            unsure.append(key)
        value = chexpert_value(cell, uncertain, row, columns[key])
        if value is None:
            excluded.add("uncertain label (--uncertain ignore)")
            return None
        labels[key] = value
    return labels, tuple(unsure)
