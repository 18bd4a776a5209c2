"""Encode one split with an exported model, once, and cache the features on disk.

A sweep runs many jobs on the same checkpoint (probe fractions x seeds, zero-shot, retrieval):
they all read the same cached file instead of re-encoding. The cache is keyed by the export's
path and the identity (size, mtime) of its weights, written atomically, and guarded by a file
lock so that two jobs starting together encode once.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from cmgl_dist.atomic import atomic_path
from cmgl_dist.config import load_config
from cmgl_dist.data import make_loader, shard_urls

WEIGHTS = "model.safetensors"


@dataclass
class SplitFeatures:
    """Every sample of a split once, in loader order. Text parts only when encoded `with_text`."""
    keys: list[str]
    labels: torch.Tensor                 # [N, 6] float, LABEL_KEYS order
    image_global: torch.Tensor           # [N, D]
    regions: Optional[torch.Tensor] = None      # [N, R, D]
    sentence: Optional[torch.Tensor] = None     # [N, D]
    words: Optional[torch.Tensor] = None        # [N, W, D], zero-padded
    word_mask: Optional[torch.Tensor] = None    # [N, W] bool

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "keys" and getattr(self, f.name) is not None}


def export_fingerprint(export_dir: str | os.PathLike) -> str:
    """Short id of an export: its absolute path plus the size and mtime of its weights."""
    weights = Path(export_dir) / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS} in {export_dir}: is it an export dir written by `cmgl train`?")
    stat = weights.stat()
    ident = f"{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha1(ident.encode()).hexdigest()[:12]


def eval_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Export:
    """An export dir whose model is loaded on first use (a cache hit never pays for it)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.fingerprint = export_fingerprint(self.path)  # fails early on a wrong path
        self._model = None
        self._cfg = None

    @property
    def cfg(self):
        if self._cfg is None:
            self._cfg = load_config(str(Path(self.path) / "config.yaml"))
        return self._cfg

    @property
    def model(self):
        if self._model is None:
            from cmgl_dist.engine.export import load_exported

            model, self._cfg = load_exported(self.path)
            self._model = model.to(eval_device()).eval()
        return self._model


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _pad_words(chunks: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(c.shape[1] for c in chunks)
    words = torch.cat([torch.nn.functional.pad(c, (0, 0, 0, width - c.shape[1])) for c in chunks])
    mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks])
    return words, mask


@torch.inference_mode()
def encode_split(model, cfg, shards: str, split: str, *, with_text: bool, batch_size: int,
                 workers: int = 0, device: Optional[torch.device] = None) -> SplitFeatures:
    """Run the model over every sample of `split` once (eval transform: centre crop)."""
    device = device or eval_device()
    model = model.to(device).eval()
    data_cfg = cfg.data.model_copy(update={"shards": shards, "workers": workers})
    loader = make_loader(shard_urls(shards, split), data_cfg, model.tokenizer, train=False,
                         batch_size=batch_size, seed=cfg.train.seed, rank=0, world_size=1)
    keys, labels, image_global, regions, sentence, words, word_mask = [], [], [], [], [], [], []
    for batch in loader:
        batch = _to_device(batch, device)
        g, r = model.encode_image(batch["images"])
        keys += list(batch["keys"])
        labels.append(batch["labels"].float().cpu())
        image_global.append(g.float().cpu())
        if with_text:
            regions.append(r.float().cpu())
            s, w, m = model.encode_text(batch)
            sentence.append(s.float().cpu())
            words.append(w.float().cpu())
            word_mask.append(m.bool().cpu())
    if not keys:
        raise ValueError(f"split {split!r} of {shards} holds no samples")
    feats = SplitFeatures(keys, torch.cat(labels), torch.cat(image_global))
    if with_text:
        feats.regions, feats.sentence = torch.cat(regions), torch.cat(sentence)
        feats.words, feats.word_mask = _pad_words(words, word_mask)
    return feats


def save_features(feats: SplitFeatures, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in feats.tensors().items()}, str(tmp),
                  metadata={"keys": json.dumps(feats.keys)})


def load_features(path: Path) -> SplitFeatures:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = json.loads(f.metadata()["keys"])
    tensors = load_file(str(path))
    return SplitFeatures(keys=keys, **tensors)


def cached_features(export: Export, shards: str, split: str, cache_dir: str | os.PathLike, *,
                    with_text: bool, batch_size: int, workers: int = 0) -> SplitFeatures:
    """The features of `split`, encoded on first use and read from `cache_dir` afterwards.

    The model is loaded only on a cache miss (`export.model` is lazy).
    """
    folder = Path(cache_dir) / export.fingerprint
    folder.mkdir(parents=True, exist_ok=True)
    shards_id = hashlib.sha1(str(Path(shards).resolve()).encode()).hexdigest()[:8]
    path = folder / f"{split}-{shards_id}{'-text' if with_text else ''}.safetensors"
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second job waits here, then reads the file
        if path.is_file():
            return load_features(path)
        feats = encode_split(export.model, export.cfg, shards, split, with_text=with_text,
                             batch_size=batch_size, workers=workers)
        save_features(feats, path)
        return feats
