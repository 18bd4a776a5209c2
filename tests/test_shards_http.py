"""Packs read over HTTP (a `python -m http.server` on 127.0.0.1) and through `pipe:` commands: the
manifest from the same place, the same batches as the local folder, exact resume at a batch offset,
a 404 shard handled as data.on_missing_shard says, a truncated shard counted as lost samples, and
verify and evaluation reading the same URLs."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmgl_dist.config import DataConfig
from cmgl_dist.data import make_loader, shard_urls
from cmgl_dist.data.shardlist import samples_without_text, shard_sample_counts, shards_fingerprint, training_mixture
from cmgl_dist.data.streams import ShardMissingError
from cmgl_dist.evaluate.corpus import patients
from cmgl_dist.shards.pack import pack
from cmgl_dist.shards.schema import MANIFEST
from cmgl_dist.shards.verify import verify


@pytest.fixture(scope="module")
def tokenizer(minilm_tokenizer):
    return minilm_tokenizer


@pytest.fixture(scope="module")
def served(tmp_path_factory, reports_tgz, metadata_csv):
    """(root folder, base URL): `pack/` (a JPEG pack), `holey/` (one train shard gone), `cut/` (one
    train shard cut short), served by `python -m http.server` for the module."""
    root = tmp_path_factory.mktemp("served")
    manifest = pack(reports=reports_tgz, images="phantom", metadata=metadata_csv, out=root / "pack", image_size=64,
                    samples_per_shard=6, seed=1, limit=60, workers=1, image_format="jpeg")
    train = [s for s in manifest["shards"] if s["split"] == "train"]
    for name in ("holey", "cut"):
        shutil.copytree(root / "pack", root / name, ignore=shutil.ignore_patterns(".*"))
    (root / "holey" / train[1]["name"]).unlink()
    shard = root / "cut" / train[1]["name"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                               "--directory", str(root)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = re.search(r"port (\d+)", server.stdout.readline()).group(1)
        yield root, f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def _cfg(**overrides) -> DataConfig:
    return DataConfig(**{"image_size": 64, "crop_size": 48, "max_length": 32, "shuffle_buffer": 8,
                         "workers": 0, **overrides})


def _batches(urls, tokenizer, **kwargs) -> list[dict]:
    cfg = kwargs.pop("cfg", _cfg())
    return list(make_loader(urls, cfg, tokenizer, batch_size=4, seed=2, **kwargs))


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x["keys"] == y["keys"] and torch.equal(x["images"], y["images"])
                                    and x["texts"] == y["texts"] for x, y in zip(a, b))


def test_a_remote_pack_lists_its_manifest_shards_from_http_or_a_pipe(served):
    root, base = served
    local = shard_urls(str(root / "pack"), "train")
    names = [Path(u).name for u in local]
    for location in (f"{base}/pack", f"{base}/pack/", f"pipe:cat {root}/pack/{{name}}",
                     f"pipe:curl -s -f {base}/pack/{{name}}"):
        urls = shard_urls(location, "train")
        assert [u.rsplit("/", 1)[-1].split(" ")[0] for u in urls] == names, location
        assert shard_sample_counts(urls) == shard_sample_counts(local)
        assert shards_fingerprint(location) == shards_fingerprint(str(root / "pack"))
    mixed = training_mixture(DataConfig(sources=[{"shards": f"{base}/pack", "weight": 2},
                                                 {"shards": str(root / "pack"), "weight": 1}]))
    assert [len(urls) for urls, _ in mixed.parts] == [len(local)] * 2 and samples_without_text(f"{base}/pack", "train") == 0
    # a shard URL given directly finds the manifest in its place
    assert shard_sample_counts([f"{base}/pack/{names[0]}"]) == shard_sample_counts(local[:1])
    with pytest.raises(OSError, match="cannot fetch .*/nothing/manifest.json"):
        shard_urls(f"{base}/nothing", "train")


def test_training_over_http_gives_the_local_batches_and_resumes_exactly(served, tokenizer):
    root, base = served
    local, remote = shard_urls(str(root / "pack"), "train"), shard_urls(f"{base}/pack", "train")
    cfg = _cfg(workers=2, order="stream")  # the streaming order, remote and local alike
    whole = _batches(remote, tokenizer, cfg=cfg, train=True, batches_per_epoch=8)
    assert _same(whole, _batches(local, tokenizer, cfg=cfg, train=True, batches_per_epoch=8))
    resumed = _batches(remote, tokenizer, cfg=cfg, train=True, batches_per_epoch=8, start_batch=5)
    assert _same(resumed, whole[5:]) and sum(b["skipped"] for b in whole) == 0


def test_a_shard_the_server_does_not_have_is_a_missing_shard(served, tokenizer):
    root, base = served
    urls = shard_urls(f"{base}/holey", "train")
    gone = [u for u in urls if not (root / "holey" / u.rsplit("/", 1)[-1]).exists()]
    assert len(gone) == 1
    with pytest.raises(ShardMissingError, match=re.escape(gone[0])):
        _batches(urls, tokenizer, train=False)
    batches = _batches(urls, tokenizer, train=False, cfg=_cfg(on_missing_shard="skip"))
    expected = dict(zip(urls, shard_sample_counts(urls)))
    assert sum(b["skipped"] for b in batches) == expected[gone[0]]
    assert sum(len(b["keys"]) for b in batches) == sum(expected.values()) - expected[gone[0]]
    problems = verify(f"{base}/holey")
    assert problems[0] == f"{gone[0].rsplit('/', 1)[-1]}: missing" and "per-split counts" in problems[1]


def test_a_truncated_response_counts_the_samples_it_lost(served, tokenizer):
    root, base = served
    urls = shard_urls(f"{base}/cut", "train")
    batches = _batches(urls, tokenizer, train=False, cfg=_cfg(on_missing_shard="fail"))
    read, lost = sum(len(b["keys"]) for b in batches), sum(b["skipped"] for b in batches)
    assert 0 < lost < 6 and read + lost == sum(shard_sample_counts(urls))
    assert any("sha256/size differs" in p for p in verify(f"{base}/cut"))


def test_verify_and_evaluation_read_the_same_urls(served):
    root, base = served
    assert verify(f"{base}/pack") == []
    assert verify(f"pipe:cat {root}/pack/{{name}}") == []
    cmgl = str(Path(sys.executable).with_name("cmgl"))
    done = subprocess.run([cmgl, "verify", f"{base}/pack"], capture_output=True, text=True)
    assert done.returncode == 0 and "OK" in done.stdout
    assert patients(f"{base}/pack", "test") == patients(str(root / "pack"), "test")
    manifest = json.loads((root / "pack" / MANIFEST).read_text())
    assert len(patients(f"{base}/pack", "all")) == manifest["samples_written"]
