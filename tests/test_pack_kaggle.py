"""IU-RR in Kaggle's layout (indiana_reports.csv + indiana_projections.csv + <uid>_IM-...dcm.png) packs
into the samples of Open-i's layout: same keys, report.json and labels.json members, same splits."""
import csv
import shutil
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import read_pack

from cmgl_dist.shards.iurr_kaggle import image_id, kaggle_tables, read_kaggle_reports
from cmgl_dist.shards.metadata import LATERAL_VIEWS, read_view_positions
from cmgl_dist.shards.pack import NothingUsable, pack
from cmgl_dist.shards.verify import verify

KAGGLE_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-cxr" / "iu-kaggle-layout"
REPORT_HEADER = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]


def _xml_members(reports_tgz, uids=None, count=None) -> dict[str, bytes]:
    out = {}
    with tarfile.open(reports_tgz) as tar:
        for member in tar:
            if member.name.endswith(".xml") and (uids is None or Path(member.name).stem in uids):
                out[Path(member.name).name] = tar.extractfile(member).read()
                if count and len(out) == count:
                    break
    return out


def _kaggle_rows(xml: bytes, views: dict[str, str]) -> tuple[list, list[list]]:
    """One indiana_reports.csv row and the indiana_projections.csv rows of one Open-i report."""
    root = ET.fromstring(xml)
    uid = root.find("uId").get("id")[3:]
    text = {(n.get("Label") or "").lower(): "".join(n.itertext()) for n in root.iter("AbstractText")}
    major = [t.text.strip() for t in root.iter("major") if t.text]
    row = [uid, ";".join(major), ";".join(m.split("/")[0] for m in major), "Xray Chest PA and Lateral",
           *(text.get(k, "") for k in ("indication", "comparison", "findings", "impression"))]
    projections = [[uid, p.get("id")[3:] + ".dcm.png", "Lateral" if views.get(p.get("id")) in LATERAL_VIEWS
                    else "Frontal"] for p in root.iter("parentImage")]
    return row, projections


def write_kaggle_tables(folder: Path, xml_members: dict[str, bytes], views: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "indiana_reports.csv", "w", newline="") as reports, \
            open(folder / "indiana_projections.csv", "w", newline="") as projections:
        report_writer, projection_writer = csv.writer(reports), csv.writer(projections)
        report_writer.writerow(REPORT_HEADER)
        projection_writer.writerow(["uid", "filename", "projection"])
        for xml in xml_members.values():
            row, rows = _kaggle_rows(xml, views)
            report_writer.writerow(row)
            projection_writer.writerows(rows)
    return folder


def test_both_layouts_pack_the_same_samples(reports_tgz, metadata_csv, tmp_path):
    if metadata_csv is None:
        pytest.skip("no nlmcxr_dicom_metadata.csv.gz")
    members = _xml_members(reports_tgz, count=300)
    xml_dir = tmp_path / "ecgen-radiology"
    xml_dir.mkdir()
    for name, data in members.items():
        (xml_dir / name).write_bytes(data)
    kaggle = write_kaggle_tables(tmp_path / "kaggle", members, read_view_positions(metadata_csv))
    common = dict(images="phantom", image_size=48, samples_per_shard=64, workers=1, seed=3)
    pack(reports=xml_dir, metadata=metadata_csv, out=tmp_path / "open-i", **common)
    pack(reports=kaggle, out=tmp_path / "kaggle-pack", **common)
    open_i, from_kaggle = read_pack(tmp_path / "open-i"), read_pack(tmp_path / "kaggle-pack")
    assert len(open_i) > 200 and set(open_i) == set(from_kaggle)
    for key, sample in open_i.items():
        theirs = from_kaggle[key]
        assert (sample["split"], sample["report.json"], sample["labels.json"]) == (
            theirs["split"], theirs["report.json"], theirs["labels.json"]), key
    assert sum(s["labels.json"]["cardiomegaly"] for s in open_i.values()) > 0


def test_the_four_real_kaggle_images_pack_with_the_projections_views(reports_tgz, tmp_path):
    """CXR1000's -2001 is a lateral that the DICOM metadata calls PA (SOURCE.md): the projections
    table, which names it Lateral, makes -1001 the frontal image and -2001 the lateral one."""
    if not KAGGLE_FOLDER.is_dir():
        pytest.skip(f"no {KAGGLE_FOLDER}")
    images = tmp_path / "images" / "images_normalized"
    images.mkdir(parents=True)
    for png in KAGGLE_FOLDER.glob("*.dcm.png"):
        shutil.copy(png, images / png.name)
    members = _xml_members(reports_tgz, uids={"1000", "1001"})
    by_eye = {"CXR1000_IM-0003-2001": "LATERAL", "CXR1001_IM-0004-1002": "LATERAL"}
    write_kaggle_tables(tmp_path, members, by_eye)
    manifest = pack(reports=tmp_path, images=str(tmp_path / "images"), out=tmp_path / "out", image_size=64,
                    samples_per_shard=8, workers=1)
    assert manifest["image_source"] == "real" and manifest["samples_written"] == 2
    metas = {k: s["meta.json"] for k, s in read_pack(tmp_path / "out").items()}
    assert (metas["CXR1000"]["frontal_image"], metas["CXR1000"]["lateral_image"]) == (
        "CXR1000_IM-0003-1001", "CXR1000_IM-0003-2001")
    assert (metas["CXR1001"]["frontal_image"], metas["CXR1001"]["lateral_image"]) == ("CXR1001_IM-0004-1001", None)
    assert [s["image"] for s in manifest["skipped_images"]] == ["CXR1001_IM-0004-1002"]
    assert verify(tmp_path / "out") == []


def test_kaggle_table_problems_name_file_line_and_field(tmp_path):
    folder = tmp_path / "k"
    folder.mkdir()
    (folder / "indiana_reports.csv").write_text("uid,MeSH,findings\n1,normal,ok\n")
    with pytest.raises(NothingUsable, match="indiana_projections.csv"):
        pack(reports=folder, images="phantom", out=tmp_path / "o1")
    (folder / "indiana_projections.csv").write_text("uid,filename,projection\n1,1_IM-0001-1001.dcm.png,Sideways\n")
    with pytest.raises(NothingUsable, match=r"indiana_reports.csv:1: header lacks column\(s\) \['indication'"):
        pack(reports=folder, images="phantom", out=tmp_path / "o2")
    (folder / "indiana_reports.csv").write_text(
        "uid,MeSH,indication,comparison,findings,impression\n1,Cardiomegaly/mild;normal,,,Big heart.,\n"
        "../x,normal,,,a,b\n1,normal,,,again,\n")
    reports, skips = read_kaggle_reports(*kaggle_tables(folder))
    assert [(r.uid, r.mesh_major, r.image_ids) for r in reports] == [
        ("CXR1", ("Cardiomegaly/mild", "normal"), ("CXR1_IM-0001-1001",))]
    reasons = [s.reason for s in skips]
    assert "indiana_projections.csv line 2: field 'projection' is 'Sideways'" in reasons[0]
    assert "indiana_reports.csv line 3: field 'uid' unsafe" in reasons[1]
    assert reasons[2] == "duplicate uid in indiana_reports.csv line 4"
    assert image_id("images_normalized/1000_IM-0003-1001.dcm.png") == "CXR1000_IM-0003-1001"
