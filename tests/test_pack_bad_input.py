"""Bad input never crashes a pack: each problem becomes a counted skip with its reason."""
import gzip
import io
import json
import tarfile

import pytest

from cmgl_dist.shards.pack import main
from cmgl_dist.shards.schema import MANIFEST
from cmgl_dist.shards.verify import verify
from helpers import grey_png, report_xml


def _report_xml(uid: int, images=(), **text) -> str:
    return report_xml(f"CXR{uid}", tuple(f"CXR{uid}_IM-0000-{i}" for i in images), **text)


def _png(seed: int) -> bytes:
    return grey_png(seed)


@pytest.fixture
def inputs(tmp_path):
    reports, images = tmp_path / "reports", tmp_path / "images"
    reports.mkdir()
    images.mkdir()
    (reports / "1.xml").write_text(_report_xml(1, ("1001", "2001")))
    (reports / "2.xml").write_text(_report_xml(2, ("1001", "2001")))
    (reports / "3.xml").write_text(_report_xml(3, ("1001",)))
    (reports / "4.xml").write_text(_report_xml(4, ("1001",)))
    (reports / "5.xml").write_text(_report_xml(5, ("1001",))[:-20])  # malformed
    (reports / "6.xml").write_text(_report_xml(6, ("1001",), findings="", impression="XXXX."))
    (reports / "7.xml").write_text(_report_xml(7, ()))
    for uid in (1, 2):
        for view in ("1001", "2001"):
            (images / f"CXR{uid}_IM-0000-{view}.png").write_bytes(_png(uid * 10 + int(view)))
    truncated = images / "CXR2_IM-0000-1001.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (images / "CXR3_IM-0000-1001.png").write_text("not an image")
    (images / "CXR5_IM-0000-1001.jpg").write_bytes(_png(5))  # belongs to the malformed report
    metadata = tmp_path / "metadata.csv.gz"
    with gzip.open(metadata, "wt") as f:
        f.write("imageid,View Position\nCXR1_IM-0000-1001,PA\nCXR1_IM-0000-2001,LL\n")
    return reports, images, metadata


def _reasons(manifest, kind):
    return {(s["uid"], s.get("image", "")): s["reason"].split(":")[0] for s in manifest[f"skipped_{kind}"]}


def test_every_bad_case_is_a_counted_skip(inputs, tmp_path):
    reports, images, metadata = inputs
    out = tmp_path / "out"
    code = main(["--reports", str(reports), "--images", str(images), "--metadata", str(metadata),
                 "--out", str(out), "--image-size", "32", "--workers", "1"])
    assert code == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["reports_read"] == 6 and manifest["samples_written"] == 2
    assert manifest["images_written"] == 3  # CXR1 frontal + lateral, CXR2 falls back to its other image
    assert _reasons(manifest, "reports") == {
        ("CXR5", ""): "malformed XML", ("CXR6", ""): "no FINDINGS or IMPRESSION text", ("CXR7", ""): "no images",
        ("CXR4", ""): "no usable frontal image", ("CXR3", ""): "no usable frontal image"}
    assert _reasons(manifest, "images") == {
        ("CXR4", "CXR4_IM-0000-1001"): "missing file", ("CXR2", "CXR2_IM-0000-1001"): "unreadable image",
        ("CXR3", "CXR3_IM-0000-1001"): "unreadable image"}
    assert verify(out) == []


def test_an_image_archive_that_ends_early(inputs, tmp_path):
    reports, images, metadata = inputs
    archive = tmp_path / "images.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(images.iterdir()):
            tar.add(path, arcname=f"png/{path.name}")
        tar.addfile(tarfile.TarInfo("png/padding.bin"), io.BytesIO(b""))
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) - 300])
    out = tmp_path / "out"
    assert main(["--reports", str(reports), "--images", str(archive), "--out", str(out),
                 "--image-size", "32", "--workers", "1"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["samples_written"] >= 1
    assert any("unreadable archive" in s["reason"] for s in manifest["skipped_images"])
    assert verify(out) == []


def test_an_unreadable_metadata_file_falls_back_to_xml_order(inputs, tmp_path):
    reports, images, _ = inputs
    broken = tmp_path / "metadata.csv.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    out = tmp_path / "out"
    assert main(["--reports", str(reports), "--images", str(images), "--metadata", str(broken),
                 "--out", str(out), "--image-size", "32", "--workers", "1"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["samples_written"] == 2


@pytest.mark.parametrize("case", ["no such file", "only malformed", "no images at all", "not an image source"])
def test_exit_code_is_non_zero_only_when_nothing_is_usable(case, inputs, tmp_path):
    reports, images, _ = inputs
    if case == "no such file":
        reports = tmp_path / "missing.tgz"
    elif case == "only malformed":
        reports = tmp_path / "malformed"
        reports.mkdir()
        (reports / "1.xml").write_text("<eCitation>")
    elif case == "no images at all":
        images = tmp_path / "empty"
        images.mkdir()
    else:
        images = tmp_path / "notes.txt"
        images.write_text("hello")
    out = tmp_path / "out"
    assert main(["--reports", str(reports), "--images", str(images), "--out", str(out), "--workers", "1"]) == 1
    assert not (out / MANIFEST).exists()
