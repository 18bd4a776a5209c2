"""A pack killed mid-way and rerun keeps its finished shards and ends with the same bytes."""
import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import kill_after_some_shards

from cmgl_dist.shards.pack import pack
from cmgl_dist.shards.schema import MANIFEST
from cmgl_dist.shards.verify import verify

ARGS = dict(image_size=96, samples_per_shard=6, seed=5, limit=120)


def _cli_args(reports, metadata, out):
    # The console script, as `cmgl main` runs it (`python -m` from the repo root would put the
    # folder kernels/ on sys.path).
    return [str(Path(sys.executable).with_name("cmgl")), "pack", "--reports", str(reports), "--images", "phantom",
            "--metadata", str(metadata), "--out", str(out), "--image-size", str(ARGS["image_size"]),
            "--samples-per-shard", str(ARGS["samples_per_shard"]), "--seed", str(ARGS["seed"]),
            "--limit", str(ARGS["limit"]), "--workers", "1"]


def test_interrupted_pack_resumes_to_the_same_bytes(tmp_path, reports_tgz, metadata_csv):
    reference = tmp_path / "reference"
    expected = pack(reports=reports_tgz, images="phantom", metadata=metadata_csv, out=reference, workers=1, **ARGS)
    assert len(expected["shards"]) > 15

    out = tmp_path / "interrupted"
    kill_after_some_shards(_cli_args(reports_tgz, metadata_csv, out), out, shards=3)
    assert not (out / MANIFEST).exists()
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    assert 3 <= len(finished) < len(expected["shards"])
    assert verify(out) == [f"{out}: no {MANIFEST} (not a finished pack)"]

    subprocess.run(_cli_args(reports_tgz, metadata_csv, out), check=True, capture_output=True)
    for name, stamp in finished.items():  # not redone
        path = out / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, name
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["shards"] == expected["shards"]
    for shard in expected["shards"]:
        assert (out / shard["name"]).read_bytes() == (reference / shard["name"]).read_bytes()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [MANIFEST] + [s["name"] for s in expected["shards"]])
    assert verify(out) == []


def test_a_finished_shard_that_was_tampered_with_is_redone(tmp_path, reports_tgz, metadata_csv):
    first = pack(reports=reports_tgz, images="phantom", metadata=metadata_csv, out=tmp_path, workers=1, **ARGS)
    victim = tmp_path / first["shards"][0]["name"]
    victim.write_bytes(victim.read_bytes()[:-1024])
    (tmp_path / ".train-000003.tar.123.tmp").write_bytes(b"left by a killed writer")
    (tmp_path / "test-000099.tar").write_bytes(b"from an earlier, larger pack")
    (tmp_path / ".progress" / "test-000099.tar.json").write_text("{}")
    again = pack(reports=reports_tgz, images="phantom", metadata=metadata_csv, out=tmp_path, workers=1, **ARGS)
    assert again == first
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.rglob("test-000099*"))
    assert os.path.getsize(victim) == first["shards"][0]["bytes"]
