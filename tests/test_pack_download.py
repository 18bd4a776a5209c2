"""The reports download: checked against its sha256, never leaves a partial file behind."""
import hashlib

import pytest

from cmgl_dist.shards.download import ChecksumError, fetch


def test_fetch_a_file_url_with_its_checksum(tmp_path):
    source = tmp_path / "source.tgz"
    source.write_bytes(b"reports" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = fetch(source.as_uri(), tmp_path / "cache" / "NLMCXR_reports.tgz", digest, chunk=100)
    assert dest.read_bytes() == source.read_bytes()
    source.unlink()  # a verified file already in place is not fetched again
    assert fetch(source.as_uri(), dest, digest) == dest


def test_a_checksum_mismatch_leaves_nothing(tmp_path):
    source = tmp_path / "source.tgz"
    source.write_bytes(b"tampered")
    dest = tmp_path / "cache" / "NLMCXR_reports.tgz"
    with pytest.raises(ChecksumError):
        fetch(source.as_uri(), dest, "0" * 64)
    assert list(dest.parent.iterdir()) == []
