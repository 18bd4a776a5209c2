"""IU-RR report XML -> `Report` records: text cleanup, MeSH terms, image ids, labels.

Reads Open-i's `NLMCXR_reports.tgz` (members `ecgen-radiology/<n>.xml`) or a folder of such XML
files. A member that cannot be read or parsed becomes a `Skip`, never an exception.
"""
from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from cmgl_dist.shards.archive import read_member, read_regular_file, tolerant_members
from cmgl_dist.shards.keys import key_problem
from cmgl_dist.shards.schema import LABEL_KEYS

TEXT_SECTIONS = ("findings", "impression", "indication", "comparison")

# MeSH major heading (text before the first '/') -> label, by lower-case substring.
# `normal` is the heading "normal" itself; a substring match would also take "abnormal".
HEADING_SUBSTRINGS = {
    "atelectasis": "atelectasis",
    "cardiomegaly": "cardiomegaly",
    "edema": "edema",
    "pleural_effusion": "pleural effusion",
    "consolidation": "consolidation",
}
# The major term of a report the indexers did not index: its labels read all 0 (neither normal
# nor any finding), but its finding set is unknown (most of these reports read as normal).
UNINDEXED = "no indexing"

# A word carrying the de-identification token (`XXXX`, `XXXX-year-old`, `x-XXXX`, `XXXX/XXXX`) is
# dropped up to the punctuation that ends it after its last token.
DEID_TOKEN = "XXXX"
_DEID_END = re.compile(r"[^.,;:!?)]*")
_WORD = re.compile(r"\S+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
_EMPTY_CLAUSE = re.compile(r"(^|(?<=[.;:!?]))\s*[.,;:]+")
_DANGLING = re.compile(r"[,;:]+(?=[.,;:!?])")  # "Comparison, ." once the words are gone


@dataclass(frozen=True)
class Skip:
    """Something left out of the pack, with why. `image` is set for image-level skips."""

    uid: str
    reason: str
    image: str = ""

    def to_json(self) -> dict:
        out = {"uid": self.uid, "reason": self.reason}
        if self.image:
            out["image"] = self.image
        return out


@dataclass(frozen=True)
class Report:
    uid: str  # as in the XML's <uId id=...>, e.g. "CXR1900"
    findings: str
    impression: str
    indication: str
    comparison: str
    mesh_major: tuple[str, ...]
    mesh_automatic: tuple[str, ...]
    image_ids: tuple[str, ...] = field(default_factory=tuple)

    @property
    def has_text(self) -> bool:
        return bool(self.findings or self.impression)

    def text_json(self) -> dict:
        return {k: getattr(self, k) for k in TEXT_SECTIONS}


def clean_text(text: str | None) -> str:
    """Remove words carrying `XXXX`, keep their trailing punctuation, normalise spaces.

    "XXXX-year-old male. PA and lateral chest XXXX." -> "male. PA and lateral chest."
    """
    text = _WORD.sub(_without_deid, text or "")
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _DANGLING.sub("", text)
    text = _EMPTY_CLAUSE.sub("", text)
    return " ".join(text.split())


def _without_deid(word: re.Match) -> str:
    """Linear in the word's length (a regex with two open runs around the token was quadratic)."""
    word = word.group()
    last = word.rfind(DEID_TOKEN)
    if last < 0:
        return word
    rest = word[last + len(DEID_TOKEN):]
    return rest[_DEID_END.match(rest).end():]


def labels_from_mesh(mesh_major: tuple[str, ...] | list[str]) -> dict[str, int]:
    headings = [term.split("/", 1)[0].strip().lower() for term in mesh_major]
    labels = {key: int(any(sub in h for h in headings)) for key, sub in HEADING_SUBSTRINGS.items()}
    labels["normal"] = int("normal" in headings)
    return {key: labels[key] for key in LABEL_KEYS}


def labels_known(mesh_major: tuple[str, ...] | list[str] | None) -> bool:
    """False for an unindexed report (`UNINDEXED`); corpora without MeSH terms label otherwise."""
    return not any(term.strip().lower() == UNINDEXED for term in mesh_major or ())


def mesh_qualifiers(mesh_major: tuple[str, ...] | list[str], label: str) -> list[str]:
    """The qualifiers ('base', 'left', 'mild', ...) of every major term that sets `label`."""
    sub = HEADING_SUBSTRINGS[label]
    out: list[str] = []
    for term in mesh_major:
        parts = [p.strip().lower() for p in term.split("/")]
        if sub in parts[0]:
            out += parts[1:]
    return out


class ReportError(ValueError):
    pass


def parse_report(data: bytes) -> Report:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise ReportError(f"malformed XML: {e}") from None
    uid_el = root.find("uId")
    uid = uid_el.get("id", "").strip() if uid_el is not None else ""
    if not uid:
        raise ReportError("no <uId id=...>")
    sections = {k: "" for k in TEXT_SECTIONS}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().lower()
        if label in sections:
            sections[label] = clean_text("".join(node.itertext()))
    mesh = root.find("MeSH")
    major = tuple(t.text.strip() for t in mesh.iter("major") if t.text) if mesh is not None else ()
    auto = tuple(t.text.strip() for t in mesh.iter("automatic") if t.text) if mesh is not None else ()
    images = tuple(p.get("id") for p in root.iter("parentImage") if p.get("id"))
    return Report(uid=uid, mesh_major=major, mesh_automatic=auto, image_ids=images, **sections)


def _uid_from_name(name: str) -> str:
    """Best-effort uid for a skip record when the XML itself is unreadable."""
    return "CXR" + Path(name).stem if Path(name).stem.isdigit() else Path(name).name


def iter_xml_members(source: str | Path) -> Iterator[tuple[str, bytes | str]]:
    """(member name, XML bytes) or (member name, error message)."""
    source = Path(source)
    if source.is_dir():
        for path in sorted(source.rglob("*.xml")):
            yield path.name, read_regular_file(path)
        return
    with tarfile.open(source, "r:*") as tar:
        broken: list[str] = []
        for member in tolerant_members(tar, broken.append):
            if member.name.endswith(".xml"):
                yield member.name, read_member(tar, member)
        # A truncated or corrupt archive: what was read is kept, and where it ended is recorded.
        for message in broken:
            yield f"{source.name}#end", message


def read_reports(source: str | Path) -> tuple[list[Report], list[Skip]]:
    """Every report in `source`, sorted by uid, plus a skip per unreadable or malformed member.

    Raises OSError / tarfile.TarError only when `source` itself cannot be opened.
    """
    reports: dict[str, Report] = {}
    skips: list[Skip] = []
    for name, data in iter_xml_members(source):
        if isinstance(data, str):
            skips.append(Skip(_uid_from_name(name), data))
            continue
        try:
            report = parse_report(data)
        except ReportError as e:
            skips.append(Skip(_uid_from_name(name), str(e)))
            continue
        if problem := key_problem(report.uid):
            skips.append(Skip(report.uid[:100], f"unsafe report id: {problem}"))
            continue
        if report.uid in reports:
            skips.append(Skip(report.uid, f"duplicate uid in {name}"))
            continue
        reports[report.uid] = report
    return [reports[k] for k in sorted(reports, key=uid_sort_key)], skips


def uid_sort_key(uid: str) -> tuple[int, str]:
    digits = "".join(c for c in uid if c.isdigit())
    return (int(digits) if digits else -1, uid)
