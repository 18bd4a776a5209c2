"""Untrusted names and sizes: a counted skip or a clear refusal, never a crash, a hang or a bad path."""
import io
import json
import logging
import os
import tarfile
import threading
import time

import pytest

from cmgl_dist.shards import archive
from cmgl_dist.shards.pack import main
from cmgl_dist.shards.reports import clean_text, read_reports
from cmgl_dist.shards.schema import MANIFEST
from cmgl_dist.shards.verify import verify
from helpers import grey_png, report_xml, write_inputs

UNSAFE_IDS = ["CXR1.5", "../CXR2", "/CXR3", "CXR/4", "C" * 300, "CXR\n6", "CXR 7", "CXR\t8", ".", ""]


def _pack(reports, images, out, *extra):
    return main(["--reports", str(reports), "--images", str(images), "--out", str(out),
                 "--image-size", "32", "--workers", "1", "--metadata", "none", *extra])


def _member_names(out):
    names = []
    for shard in out.glob("*.tar"):
        with tarfile.open(shard) as tar:
            names += tar.getnames()
    return names


def test_unsafe_report_ids_are_counted_skips_and_never_reach_a_shard(tmp_path):
    reports, images = write_inputs(tmp_path, ["CXR10", "CXR11", *UNSAFE_IDS])
    out = tmp_path / "out"
    assert _pack(reports, images, out) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["samples_written"] == 2
    unsafe = [s for s in manifest["skipped_reports"] if s["reason"].startswith("unsafe report id")]
    assert len(unsafe) == len(UNSAFE_IDS) - 1  # the empty id is "no <uId id=...>"
    for name in _member_names(out):
        key = name.split(".", 1)[0]
        assert key in ("CXR10", "CXR11") and "/" not in name and "\n" not in name
    assert verify(out) == []


@pytest.mark.timeout(20)
def test_text_cleaning_is_linear_on_a_long_word():
    word = "a" * 200_000
    started = time.perf_counter()
    assert clean_text(f"{word} XXXX-year-old male.") == f"{word} male."
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("text, expected", [
    ("XXXX-year-old male. PA and lateral chest XXXX.", "male. PA and lateral chest."),
    ("Comparison XXXX, XXXX.", "Comparison."),
    ("x-XXXX, XXXX/XXXX) done", ") done"),
    ("aXXXXXb; c", "c"),
    ("The XXXX.XXXX, is fine XXXX)x a", "The, is fine )x a"),
    ("XXXXXXXX!?. ok", "!? ok"),
])
def test_text_cleaning_keeps_its_meaning(text, expected):
    assert clean_text(text) == expected


def test_an_archive_member_over_the_cap_is_skipped_not_read(tmp_path, monkeypatch):
    reports, images = write_inputs(tmp_path, ["CXR1", "CXR2"])
    archive_path = tmp_path / "images.tar"
    with tarfile.open(archive_path, "w") as tar:
        tar.add(images / "IMG0.png", arcname="png/IMG0.png")
        big = grey_png(1, shape=(400, 400))
        info = tarfile.TarInfo("png/IMG1.png")
        info.size = len(big)
        tar.addfile(info, io.BytesIO(big))
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 50_000)
    out = tmp_path / "out"
    assert _pack(reports, archive_path, out) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["samples_written"] == 1
    assert any(s["reason"].startswith("member too large") for s in manifest["skipped_images"])


def test_special_archive_members_are_counted_skips(tmp_path):
    tgz = tmp_path / "reports.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        data = report_xml("CXR1", ("IMG0",)).encode()
        info = tarfile.TarInfo("ecgen-radiology/1.xml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for kind, name in ((tarfile.SYMTYPE, "2.xml"), (tarfile.FIFOTYPE, "3.xml"), (tarfile.CHRTYPE, "4.xml")):
            special = tarfile.TarInfo(f"ecgen-radiology/{name}")
            special.type, special.linkname = kind, "/dev/zero"
            tar.addfile(special)
    parsed, skips = read_reports(tgz)
    assert [r.uid for r in parsed] == ["CXR1"]
    assert sorted(s.reason for s in skips) == ["not a regular file"] * 3


@pytest.mark.timeout(30)
def test_a_fifo_in_a_reports_folder_is_skipped_not_waited_on(tmp_path):
    reports, _ = write_inputs(tmp_path, ["CXR1"])
    os.mkfifo(reports / "9.xml")
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=read_reports(reports)), daemon=True)
    worker.start()
    worker.join(10)
    assert "out" in result, "read_reports blocked on a FIFO"
    parsed, skips = result["out"]
    assert [r.uid for r in parsed] == ["CXR1"] and [s.reason for s in skips] == ["not a regular file"]


def test_an_oversized_report_file_is_skipped(tmp_path, monkeypatch):
    reports, _ = write_inputs(tmp_path, ["CXR1", "CXR2"])
    (reports / "1.xml").write_text(report_xml("CXR2", ("IMG1",), findings="word " * 20_000))
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 50_000)
    parsed, skips = read_reports(reports)
    assert [r.uid for r in parsed] == ["CXR1"] and skips[0].reason.startswith("member too large")


@pytest.mark.parametrize("flag, value", [("--limit", "0"), ("--limit", "-3"), ("--image-size", "100000"),
                                         ("--image-size", "8"), ("--samples-per-shard", "0"), ("--workers", "0")])
def test_argument_bounds_are_refused_before_any_work(tmp_path, capsys, flag, value):
    reports, images = write_inputs(tmp_path, ["CXR1"])
    with pytest.raises(SystemExit) as exit_info:
        _pack(reports, images, tmp_path / "out", flag, value)
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_when_every_sample_is_skipped_the_reasons_are_shown(tmp_path, caplog):
    reports, images = write_inputs(tmp_path, ["CXR1", "CXR2"])
    for path in images.iterdir():
        path.write_bytes(b"not an image")
    with caplog.at_level(logging.ERROR, logger="cmgl.pack"):
        assert _pack(reports, images, tmp_path / "out") == 1
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert "unreadable image" in message and "CXR1" in message


def test_when_no_report_is_usable_the_reasons_are_shown(tmp_path, caplog):
    reports, images = write_inputs(tmp_path, ["CXR1", "CXR2"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level(logging.ERROR, logger="cmgl.pack"):
        assert _pack(reports, empty, tmp_path / "out") == 1
    assert "missing file" in caplog.text and "CXR1 IMG0" in caplog.text


def test_corpus_ids_map_to_safe_distinct_keys():
    from cmgl_dist.shards.keys import key_problem
    from cmgl_dist.shards.sources.record import sample_key

    ids = ["a.b/c", "x y\nz", "../../etc", "p" * 200, "p" * 199 + "q"]
    keys = [sample_key("csv", i) for i in ids]
    assert all(key_problem(k) is None for k in keys) and len(set(keys)) == len(keys)
    assert sample_key("nih", "00000001_000") == "nih_00000001_000"
