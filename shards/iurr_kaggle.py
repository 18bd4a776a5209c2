"""IU-RR as Kaggle distributes it ("chest-xrays-indiana-university"): the same reports and images
as Open-i's, in other files.

    indiana_reports.csv      uid, MeSH, Problems, image, indication, comparison, findings, impression
    indiana_projections.csv  uid, filename, projection (Frontal | Lateral)
    images/images_normalized/<uid>_IM-xxxx-xxxx.dcm.png   (full resolution, ~2048 px)

Read into the Open-i layout's samples: report uid `1000` -> `CXR1000`, image `1000_IM-0003-1001.dcm.png`
-> `CXR1000_IM-0003-1001`, MeSH major terms from the `MeSH` column (`;`-separated, the XML's
`<major>` terms), text through the same cleaning, so keys, labels and splits are those of the XML.
Views come from the projections table, which the Kaggle curators set per image (Open-i's DICOM
metadata calls some laterals PA: see shards/SCHEMA.md).
"""
from __future__ import annotations

import csv
from pathlib import Path

from cmgl_dist.shards.keys import key_problem
from cmgl_dist.shards.reports import Report, Skip, clean_text, uid_sort_key

REPORTS_CSV = "indiana_reports.csv"
PROJECTIONS_CSV = "indiana_projections.csv"
IMAGE_SUFFIX = ".dcm.png"
REPORT_COLUMNS = ("uid", "MeSH", "indication", "comparison", "findings", "impression")
PROJECTION_COLUMNS = ("uid", "filename", "projection")
# Kaggle projection -> the view names shards.metadata.choose_views reads.
VIEWS = {"frontal": "FRONTAL", "lateral": "LATERAL"}


class KaggleLayoutError(ValueError):
    """A Kaggle IU-RR table that cannot be read (names file, line and field)."""


def kaggle_tables(reports: str | Path | None) -> tuple[Path, Path] | None:
    """(reports CSV, projections CSV) when `reports` is the Kaggle reports CSV or a folder holding
    it (the projections CSV beside it); None for the Open-i layout."""
    if reports is None:
        return None
    path = Path(reports)
    table = path / REPORTS_CSV if path.is_dir() else path
    if table.name != REPORTS_CSV or not table.is_file():
        return None
    projections = table.with_name(PROJECTIONS_CSV)
    if not projections.is_file():
        raise KaggleLayoutError(f"{table}: the Kaggle IU-RR layout needs {PROJECTIONS_CSV} beside it")
    return table, projections


def image_id(filename: str) -> str:
    """`1000_IM-0003-1001.dcm.png` -> `CXR1000_IM-0003-1001` (the Open-i image id)."""
    name = Path(filename).name
    stem = name[:-len(IMAGE_SUFFIX)] if name.lower().endswith(IMAGE_SUFFIX) else Path(name).stem
    return "CXR" + stem


def _rows(path: Path, columns: tuple[str, ...]):
    """(line number, row) of a CSV whose header holds `columns`; errors name the file and line."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise KaggleLayoutError(f"{path}:1: header lacks column(s) {missing} (has {reader.fieldnames})")
            for row in reader:
                yield reader.line_num, row
    except (UnicodeDecodeError, csv.Error) as e:
        raise KaggleLayoutError(f"{path}: unreadable CSV: {e}") from None


def read_projections(path: Path) -> tuple[dict[str, list[str]], dict[str, str], list[Skip]]:
    """uid -> image ids in table order, image id -> view ('FRONTAL', 'LATERAL' or ''), skips."""
    images: dict[str, list[str]] = {}
    views: dict[str, str] = {}
    skips: list[Skip] = []
    for line, row in _rows(path, PROJECTION_COLUMNS):
        uid, filename = "CXR" + (row["uid"] or "").strip(), (row["filename"] or "").strip()
        projection = (row["projection"] or "").strip().lower()
        if not filename:
            skips.append(Skip(uid, f"{path.name} line {line}: empty field 'filename'"))
            continue
        if projection and projection not in VIEWS:
            skips.append(Skip(uid, f"{path.name} line {line}: field 'projection' is {row['projection']!r}, "
                                   f"not Frontal or Lateral (view left unknown)", image_id(filename)))
        images.setdefault(uid, []).append(image_id(filename))
        views[image_id(filename)] = VIEWS.get(projection, "")
    return images, views, skips


def read_kaggle_reports(reports_csv: Path, projections_csv: Path) -> tuple[list[Report], list[Skip]]:
    """Every report of the Kaggle tables as the Open-i reader returns it, sorted by uid, plus skips
    (bad rows, duplicate uids). Raises KaggleLayoutError for a table that cannot be read at all."""
    images, _, skips = read_projections(projections_csv)
    reports: dict[str, Report] = {}
    for line, row in _rows(reports_csv, REPORT_COLUMNS):
        raw_uid = (row["uid"] or "").strip()
        uid = "CXR" + raw_uid
        if not raw_uid or (problem := key_problem(uid)):
            skips.append(Skip(uid[:100], f"{reports_csv.name} line {line}: field 'uid' "
                                         f"{'is empty' if not raw_uid else f'unsafe: {problem}'}"))
            continue
        if uid in reports:
            skips.append(Skip(uid, f"duplicate uid in {reports_csv.name} line {line}"))
            continue
        mesh = tuple(term.strip() for term in (row["MeSH"] or "").split(";") if term.strip())
        reports[uid] = Report(uid=uid, findings=clean_text(row["findings"]), impression=clean_text(row["impression"]),
                              indication=clean_text(row["indication"]), comparison=clean_text(row["comparison"]),
                              mesh_major=mesh, mesh_automatic=(), image_ids=tuple(images.get(uid, ())))
    return [reports[k] for k in sorted(reports, key=uid_sort_key)], skips


def kaggle_views(projections_csv: Path) -> dict[str, str]:
    """image id -> view from the projections table (what `choose_views` reads)."""
    return read_projections(projections_csv)[1]


def index_kaggle_images(folder: str | Path) -> dict[str, Path]:
    """Open-i image id -> file for every `<uid>_IM-...dcm.png` under `folder` (any depth)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(folder).rglob(f"*{IMAGE_SUFFIX}")):
        if path.is_file():
            found.setdefault(image_id(path.name), path)
    return found
