"""`cmgl verify` passes on a fresh pack and catches every kind of mismatch."""
import io
import json
import shutil
import tarfile

import pytest

from cmgl_dist.shards.schema import MANIFEST
from cmgl_dist.shards.verify import main, verify


@pytest.fixture
def packed(small_shards, tmp_path):
    copy = tmp_path / "packed"
    shutil.copytree(small_shards, copy)
    return copy


def _first_shard(folder):
    return folder / json.loads((folder / MANIFEST).read_text())["shards"][0]["name"]


def _rewrite_shard(path, change):
    """Rewrite a shard with `change(name, data) -> (name, data) | None` applied to each member."""
    members = []
    with tarfile.open(path) as tar:
        for member in tar:
            changed = change(member.name, tar.extractfile(member).read())
            if changed is not None:
                members.append(changed)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_fresh_pack_verifies(small_shards, capsys):
    assert main([str(small_shards)]) == 0
    assert "OK" in capsys.readouterr().out


def test_flipped_byte(packed):
    shard = _first_shard(packed)
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert any("sha256" in p for p in verify(packed))
    assert main([str(packed)]) == 1


def test_missing_and_unlisted_shards(packed):
    shard = _first_shard(packed)
    shard.rename(packed / "train-999999.tar")
    problems = verify(packed)
    assert any(p == f"{shard.name}: missing" for p in problems)
    assert any("train-999999.tar: on disk but not in the manifest" == p for p in problems)


def test_no_manifest_is_not_a_finished_pack(packed):
    (packed / MANIFEST).unlink()
    assert main([str(packed)]) == 1


@pytest.mark.parametrize("damage, expected", [
    (lambda n, d: None if n.endswith("labels.json") else (n, d), "missing labels.json"),
    (lambda n, d: (n, b'{"edema": 1}') if n.endswith("labels.json") else (n, d), "labels.json keys"),
    (lambda n, d: (n, d[:100]) if n.endswith("frontal.png") else (n, d), "undecodable image"),
    (lambda n, d: (n, d.replace(b'"split": "', b'"split": "x')) if n.endswith("meta.json") else (n, d), "meta.json"),
])
def test_damaged_samples_are_reported_even_with_a_matching_checksum(packed, damage, expected):
    """Re-checksum the manifest after the damage: the sample checks alone must catch it."""
    from cmgl_dist.shards.writer import sha256_file

    shard = _first_shard(packed)
    _rewrite_shard(shard, damage)
    manifest = json.loads((packed / MANIFEST).read_text())
    manifest["shards"][0].update(sha256=sha256_file(shard), bytes=shard.stat().st_size)
    (packed / MANIFEST).write_text(json.dumps(manifest))
    problems = verify(packed)
    assert any(expected in p for p in problems), problems
