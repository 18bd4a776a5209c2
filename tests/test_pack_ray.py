"""`cmgl pack --ray`: shard jobs as Ray tasks on a local instance give the one-process pack's bytes,
and a driver killed mid-way leaves finished shards that the rerun keeps."""
import json
import sys
from pathlib import Path

import pytest
from helpers import kill_after_some_shards

from cmgl_dist.shards.pack import pack
from cmgl_dist.shards.schema import MANIFEST
from cmgl_dist.shards.verify import verify

ray = pytest.importorskip("ray")

ARGS = dict(image_size=64, samples_per_shard=4, seed=7, limit=80, image_format="jpeg")


@pytest.fixture(scope="module")
def ray_address():
    # one local Ray instance for the module (start-up is the slow part); the packs join it
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield context.address_info["address"]
    ray.shutdown()


def _pack(out, reports, metadata, **kw):
    return pack(reports=reports, images="phantom", metadata=metadata, out=out, **{**ARGS, "workers": 1, **kw})


def test_a_ray_pack_is_byte_identical_to_a_one_process_pack(ray_address, tmp_path, reports_tgz, metadata_csv):
    local = _pack(tmp_path / "local", reports_tgz, metadata_csv)
    on_ray = _pack(tmp_path / "ray", reports_tgz, metadata_csv, ray_address=ray_address)
    assert ray.is_initialized()  # a session it did not start is left running
    assert on_ray["shards"] == local["shards"] and on_ray["shards_sha256"] == local["shards_sha256"]
    for shard in local["shards"]:
        assert (tmp_path / "ray" / shard["name"]).read_bytes() == (tmp_path / "local" / shard["name"]).read_bytes()
    assert verify(tmp_path / "ray") == []
    # a shard whose record still matches its task but whose bytes were damaged is rendered again
    victim = tmp_path / "ray" / local["shards"][0]["name"]
    victim.write_bytes(victim.read_bytes()[:-512])
    again = _pack(tmp_path / "ray", reports_tgz, metadata_csv, ray_address=ray_address)
    assert again["shards"] == local["shards"] and verify(tmp_path / "ray") == []


def test_a_killed_ray_driver_resumes_from_its_committed_shards(ray_address, tmp_path, reports_tgz, metadata_csv):
    out = tmp_path / "out"
    command = [str(Path(sys.executable).with_name("cmgl")), "pack", "--reports", str(reports_tgz), "--images",
               "phantom", "--metadata", str(metadata_csv), "--out", str(out), "--image-size", str(ARGS["image_size"]),
               "--samples-per-shard", str(ARGS["samples_per_shard"]), "--seed", str(ARGS["seed"]), "--limit",
               str(ARGS["limit"]), "--format", "jpeg", "--ray", ray_address]
    kill_after_some_shards(command, out, shards=2, timeout=120)
    assert not (out / MANIFEST).exists()  # written once, at the end
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    manifest = _pack(out, reports_tgz, metadata_csv, ray_address=ray_address)
    assert len(kept) < len(manifest["shards"])
    for name, stamp in kept.items():  # committed shards are not redone
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == stamp, name
    assert manifest["shards"] == _pack(tmp_path / "local", reports_tgz, metadata_csv)["shards"]
    assert json.loads((out / MANIFEST).read_text())["shards"] == manifest["shards"] and verify(out) == []
