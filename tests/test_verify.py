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


def _rechecksum(packed, index=0):
    from cmgl_dist.shards.writer import sha256_file

    manifest = json.loads((packed / MANIFEST).read_text())
    shard = packed / manifest["shards"][index]["name"]
    manifest["shards"][index].update(sha256=sha256_file(shard), bytes=shard.stat().st_size)
    (packed / MANIFEST).write_text(json.dumps(manifest))


def _add_members(shard, infos):
    with tarfile.open(shard, "a") as tar:
        for info, data in infos:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _info(name, data=b"", kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("change, expected", [
    (lambda n, d: (n, b"[1, 2]") if n.endswith("labels.json") else (n, d), "labels.json"),
    (lambda n, d: (n, b'{"atelectasis": "yes"}') if n.endswith("labels.json") else (n, d), "labels.json"),
    (lambda n, d: (n, b"\xff\xfe not utf-8") if n.endswith("report.json") else (n, d), "report.json"),
    (lambda n, d: (n, b'"a string"') if n.endswith("meta.json") else (n, d), "meta.json"),
    (lambda n, d: (n, b"PK not a zip") if n.endswith("masks.npz") else (n, d), "masks.npz"),
])
def test_bad_json_and_npz_members_are_listed_not_raised(packed, change, expected):
    _rewrite_shard(_first_shard(packed), change)
    _rechecksum(packed)
    problems = verify(packed)
    assert problems and any(expected in p for p in problems), problems
    assert main([str(packed)]) == 1


def test_odd_members_are_each_listed(packed):
    shard = _first_shard(packed)
    with tarfile.open(shard) as tar:
        first_member = tar.getnames()[0]
    _add_members(shard, [_info(first_member, b"again"), _info("README"), _info("../escape.frontal.png", b"x"),
                         _info("dir", kind=tarfile.DIRTYPE), _info("link.frontal.png", kind=tarfile.SYMTYPE)])
    _rechecksum(packed)
    problems = verify(packed)
    for name in (first_member, "README", "../escape.frontal.png", "dir", "link.frontal.png"):
        assert any(repr(name) in p for p in problems), (name, problems)


@pytest.mark.parametrize("damage", [
    lambda m: m.pop("shards"),
    lambda m: m["shards"][0].pop("sha256"),
    lambda m: m["shards"][0].update(name="../../etc/passwd"),
    lambda m: m["arguments"].pop("image_size"),
    lambda m: m.update(splits="many"),
    lambda m: m.clear() or m.update(format=1),
])
def test_a_malformed_manifest_is_a_problem_not_a_traceback(packed, damage):
    manifest = json.loads((packed / MANIFEST).read_text())
    damage(manifest)
    (packed / MANIFEST).write_text(json.dumps(manifest))
    assert verify(packed)
    assert main([str(packed)]) == 1


def test_a_manifest_that_is_not_an_object(packed):
    (packed / MANIFEST).write_text("[]")
    assert verify(packed) and main([str(packed)]) == 1


def test_every_damaged_shard_is_listed(packed, capsys):
    manifest = json.loads((packed / MANIFEST).read_text())
    for entry in manifest["shards"][:3]:
        path = packed / entry["name"]
        data = bytearray(path.read_bytes())
        data[700] ^= 0xFF
        path.write_bytes(bytes(data))
    problems = verify(packed)
    for entry in manifest["shards"][:3]:
        assert any(p.startswith(entry["name"]) for p in problems)
    assert main([str(packed), "--all"]) == 1
    assert capsys.readouterr().err.count("MISMATCH") == len(problems)
