"""View positions from the IU-RR DICOM metadata CSV, and the choice of frontal/lateral images.

The CSV (`nlmcxr_dicom_metadata.csv.gz`, plain or gzip) has one row per image id with a
`View Position` of PA, AP, LL, RL, LATERAL, LARGE LATERAL or blank (blank for about a third).
"""
from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path

FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LARGE LATERAL")


def read_view_positions(path: str | Path) -> dict[str, str]:
    """image id -> upper-case view position ('' when the CSV leaves it blank)."""
    path = Path(path)
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        rows = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
        if rows.fieldnames is None or not {"imageid", "View Position"} <= set(rows.fieldnames):
            raise ValueError(f"{path}: expected columns 'imageid' and 'View Position'")
        return {row["imageid"]: (row["View Position"] or "").strip().upper() for row in rows}


@dataclass(frozen=True)
class ViewChoice:
    frontal_candidates: tuple[str, ...]  # best first; the packer takes the first usable one
    lateral: str | None
    rule: str  # "metadata" or "fallback-xml-order", recorded in meta.json


def choose_views(image_ids: tuple[str, ...], views: dict[str, str]) -> ViewChoice:
    """Frontal: images the metadata calls PA, then AP, then FRONTAL (Kaggle's projections), in XML order. When the metadata names no
    frontal view for a report, fall back to XML order over the images it does not call lateral
    (Open-i lists the frontal `-1001` first; measured on the reports whose first image has a
    view position, that image is PA/AP in 90% of them).
    Lateral: the first image the metadata calls lateral, else in the fallback the next image.
    """
    pa = [i for i in image_ids if views.get(i) == "PA"]
    ap = [i for i in image_ids if views.get(i) == "AP"]
    frontal = [i for i in image_ids if views.get(i) == "FRONTAL"]  # Kaggle's projections table
    lateral = [i for i in image_ids if views.get(i) in LATERAL_VIEWS]
    if pa or ap or frontal:
        return ViewChoice(tuple(pa + ap + frontal), lateral[0] if lateral else None, "metadata")
    unknown = [i for i in image_ids if i not in lateral]
    if lateral:
        return ViewChoice(tuple(unknown), lateral[0], "fallback-xml-order")
    return ViewChoice(tuple(unknown), unknown[1] if len(unknown) > 1 else None, "fallback-xml-order")
