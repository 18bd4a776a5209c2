"""Report parsing and labelling on the real IU-RR reports, and on broken inputs."""
import re
import tarfile

import pytest

from cmgl_dist.shards.reports import (clean_text, labels_from_mesh, labels_known, mesh_qualifiers, parse_report,
                                      read_reports)
from cmgl_dist.shards.schema import LABEL_KEYS

GOOD_XML = b"""<?xml version="1.0"?><eCitation><uId id="CXR42"/>
<Abstract><AbstractText Label="FINDINGS">XXXX-year-old. Heart size is XXXX.</AbstractText>
<AbstractText Label="IMPRESSION">Small left effusion.</AbstractText></Abstract>
<MeSH><major>Pleural Effusion/left/small</major><automatic>effusion</automatic></MeSH>
<parentImage id="CXR42_IM-0001-1001"/><parentImage id="CXR42_IM-0001-2001"/></eCitation>"""


@pytest.fixture(scope="module")
def all_reports(reports_tgz):
    return read_reports(reports_tgz)


def test_counts_match_the_archive(all_reports):
    reports, skips = all_reports
    assert skips == []
    assert len(reports) == 3955
    assert sum(bool(r.image_ids) for r in reports) == 3851
    assert sum(len(r.image_ids) for r in reports) == 7470
    assert sum(r.has_text for r in reports) == 3927
    assert len({r.uid for r in reports}) == 3955


def test_labels_match_an_independent_count_of_mesh_major_terms(reports_tgz, all_reports):
    """Count positives with a regex over the raw XML, not through the parser."""
    expected = dict.fromkeys(LABEL_KEYS, 0)
    words = {"atelectasis": "atelectasis", "cardiomegaly": "cardiomegaly", "edema": "edema",
             "pleural_effusion": "pleural effusion", "consolidation": "consolidation"}
    with tarfile.open(reports_tgz) as tar:
        for member in tar:
            if not member.name.endswith(".xml"):
                continue
            xml = tar.extractfile(member).read().decode().lower()
            if "<parentimage" not in xml:
                continue
            majors = re.findall(r"<major>(.*?)</major>", xml)
            for key, word in words.items():
                expected[key] += any(word in m for m in majors)
            expected["normal"] += "normal" in majors
    reports, _ = all_reports
    counted = dict.fromkeys(LABEL_KEYS, 0)
    for report in reports:
        if report.image_ids:
            for key, value in labels_from_mesh(report.mesh_major).items():
                counted[key] += value
    assert counted == expected
    # The figures measured on the shared files when this was written.
    assert counted == {"atelectasis": 315, "cardiomegaly": 345, "edema": 42, "pleural_effusion": 149,
                       "consolidation": 30, "normal": 1379}


def test_known_report_1900(all_reports):
    report = {r.uid: r for r in all_reports[0]}["CXR1900"]
    assert report.image_ids == ("CXR1900_IM-0584-1001", "CXR1900_IM-0584-2001")
    assert report.findings.startswith("There are sternotomy identified.")
    assert report.comparison == "PA and lateral chest."
    assert "Calcified Granuloma/lung/bilateral/scattered/multiple" in report.mesh_major
    assert labels_from_mesh(report.mesh_major) == dict.fromkeys(LABEL_KEYS, 0)


@pytest.mark.parametrize("raw, cleaned", [
    ("XXXX-year-old male with cough.", "male with cough."),
    ("PA and lateral chest XXXX.", "PA and lateral chest."),
    ("Comparison XXXX, XXXX.", "Comparison."),
    ("Stable x-XXXX of the chest", "Stable of the chest"),
    ("XXXX.", ""),
    ("  Heart   normal .  ", "Heart normal."),
])
def test_deidentification_words_are_removed(raw, cleaned):
    assert clean_text(raw) == cleaned
    assert "XXXX" not in clean_text(raw)


def test_normal_is_the_heading_not_a_substring():
    assert labels_from_mesh(["Opacity/lung/multiple/abnormal"])["normal"] == 0
    assert labels_from_mesh(["normal"])["normal"] == 1
    assert labels_from_mesh(["Pericardial Effusion"])["pleural_effusion"] == 0
    assert mesh_qualifiers(["Pleural Effusion/left/small", "Cardiomegaly/mild"], "pleural_effusion") == ["left", "small"]


def test_unindexed_reports_have_unknown_labels(all_reports):
    """'No Indexing' reports label as neither normal nor any finding, but their findings are unknown."""
    reports, _ = all_reports
    unindexed = [r for r in reports if not labels_known(r.mesh_major)]
    assert len(unindexed) == 95 and all(r.mesh_major == ("No Indexing",) for r in unindexed)
    assert all(not any(labels_from_mesh(r.mesh_major).values()) for r in unindexed)
    assert labels_known(["normal"]) and labels_known(["Opacity/lung/no indexing"]) and labels_known(None)


def test_parse_one_report():
    report = parse_report(GOOD_XML)
    assert report.uid == "CXR42"
    assert report.findings == "Heart size is."
    assert report.impression == "Small left effusion."
    assert report.image_ids == ("CXR42_IM-0001-1001", "CXR42_IM-0001-2001")
    assert labels_from_mesh(report.mesh_major)["pleural_effusion"] == 1


def test_bad_xml_in_a_folder_is_a_counted_skip(tmp_path):
    (tmp_path / "42.xml").write_bytes(GOOD_XML)
    (tmp_path / "43.xml").write_bytes(b"<eCitation><uId id='CXR43'/><unclosed></eCitation>")
    (tmp_path / "44.xml").write_bytes(b"<eCitation></eCitation>")
    reports, skips = read_reports(tmp_path)
    assert [r.uid for r in reports] == ["CXR42"]
    assert {s.uid: s.reason.split(":")[0] for s in skips} == {"CXR43": "malformed XML", "CXR44": "no <uId id=...>"}


def test_truncated_archive_keeps_what_was_read(tmp_path, reports_tgz):
    data = reports_tgz.read_bytes()
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(data[: len(data) // 2])
    reports, skips = read_reports(truncated)
    assert 500 < len(reports) < 3955
    # The member cut in half, then the end of the archive.
    assert 1 <= len(skips) <= 2 and all("unreadable archive" in s.reason for s in skips)
