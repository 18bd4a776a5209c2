"""Encode one split with an exported model, once, and cache the features on disk.

A sweep runs many jobs on the same checkpoint (probe fractions x seeds, zero-shot, retrieval):
they all read the same cached file instead of re-encoding. The evaluation context
(`context.py`) names the file after what the features were computed from (the export's and the
shards' content fingerprints, the split, the loader settings and `FEATURES_FORMAT`); here it is
written atomically and guarded by a file lock so that two jobs starting together encode once.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from safetensors.torch import load_file, save_file

from cmgl_dist.atomic import atomic_path
from cmgl_dist.config import load_config
from cmgl_dist.data.device import to_device

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
# What a feature file holds; part of its cache key, so a file of another format is not found.
# 2: with_text files also carry each text's word strings (metadata "word_strings");
# 3: every file also carries the backbone's pooled features (`image_pooled`, the probe's default).
FEATURES_FORMAT = 3


@dataclass
class SplitFeatures:
    """Every sample of a split once, in loader order. Text parts only when encoded `with_text`."""
    keys: list[str]
    labels: torch.Tensor                 # [N, 6] float, LABEL_KEYS order
    image_global: torch.Tensor           # [N, D]
    image_pooled: Optional[torch.Tensor] = None  # [N, C], the image backbone's pooled features
    regions: Optional[torch.Tensor] = None      # [N, R, D]
    sentence: Optional[torch.Tensor] = None     # [N, D]
    words: Optional[torch.Tensor] = None        # [N, W, D], zero-padded
    word_mask: Optional[torch.Tensor] = None    # [N, W] bool
    word_strings: Optional[list[list[str]]] = None  # per text, one string per True of its word_mask row

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("keys", "word_strings") and getattr(self, f.name) is not None}

    def text_words(self, row: int) -> tuple[torch.Tensor, list[str]]:
        """(real words [W, D], their strings) of the text of sample `row`."""
        if self.words is None or self.word_strings is None:
            raise ValueError("these features hold no text words: encode them with_text")
        return self.words[row][self.word_mask[row]], self.word_strings[row]

    def probe_inputs(self, choice: str):
        """[N, F] numpy features the linear probe fits on (`eval.probe_features`)."""
        if choice == "embedding":
            return self.image_global.numpy()
        if choice != "backbone":
            raise ValueError(f"probe_features={choice!r} is not backbone or embedding (eval.probe_features)")
        if self.image_pooled is None:
            raise ValueError("these features hold no backbone pooled features: encode them again")
        return self.image_pooled.numpy()


def export_fingerprint(export_dir: str | os.PathLike) -> str:
    """Content id of an export: the sha256 of its weights and its config (a re-export in place changes it)."""
    export_dir = Path(export_dir)
    weights = export_dir / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS} in {export_dir}: is it an export dir written by `cmgl train`?")
    digest = hashlib.sha256()
    for path in (weights, export_dir / CONFIG):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


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
            self._cfg = load_config(str(Path(self.path) / CONFIG))
        return self._cfg

    @property
    def model(self):
        if self._model is None:
            from cmgl_dist.engine.export import load_exported

            model, self._cfg = load_exported(self.path)
            self._model = model.to(eval_device()).eval()
        return self._model


def _pad_words(chunks: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(c.shape[1] for c in chunks)
    words = torch.cat([torch.nn.functional.pad(c, (0, 0, 0, width - c.shape[1])) for c in chunks])
    mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks])
    return words, mask


@torch.inference_mode()
def encode_split(model, loader: Iterable[dict], *, with_text: bool, device: Optional[torch.device] = None,
                 what: str = "the split") -> SplitFeatures:
    """Run the model over every batch of an evaluation loader (one pass, centre crops)."""
    device = device or eval_device()
    model = model.to(device).eval()
    keys, labels, image_global, pooled, regions, sentence, words, word_mask, strings = ([] for _ in range(9))
    for batch in loader:
        batch = to_device(batch, device)
        g, r, p = model.encode_image(batch["images"], with_pooled=True)
        keys += list(batch["keys"])
        labels.append(batch["labels"].float().cpu())
        image_global.append(g.float().cpu())
        pooled.append(p.float().cpu())
        if with_text:
            regions.append(r.float().cpu())
            s, w, m = model.encode_text(batch)
            sentence.append(s.float().cpu())
            words.append(w.float().cpu())
            word_mask.append(m.bool().cpu())
            strings += _word_strings(batch, word_mask[-1])
    if not keys:
        raise ValueError(f"{what} holds no samples")
    feats = SplitFeatures(keys, torch.cat(labels), torch.cat(image_global), torch.cat(pooled))
    if with_text:
        feats.regions, feats.sentence = torch.cat(regions), torch.cat(sentence)
        feats.words, feats.word_mask = _pad_words(words, word_mask)
        feats.word_strings = strings
    return feats


def _word_strings(batch: dict, word_mask: torch.Tensor) -> list[list[str]]:
    """The batch's word strings (`tokenize_texts`), checked against the word columns they name."""
    strings = batch["words"]
    counts = word_mask.sum(1).tolist()
    if [len(s) for s in strings] != counts:
        raise ValueError(f"word strings do not match word_mask: {[len(s) for s in strings]} strings "
                         f"for {counts} words per text (batch keys {batch['keys'][:3]}...)")
    return [list(s) for s in strings]


def save_features(feats: SplitFeatures, path: Path) -> None:
    metadata = {"keys": json.dumps(feats.keys), "format": str(FEATURES_FORMAT)}
    if feats.word_strings is not None:
        metadata["word_strings"] = json.dumps(feats.word_strings)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in feats.tensors().items()}, str(tmp), metadata=metadata)


def load_features(path: Path) -> SplitFeatures:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    strings = metadata.get("word_strings")
    if "words" in tensors and strings is None:
        raise ValueError(f"{path} holds text features without their word strings (written before feature "
                         f"format {FEATURES_FORMAT}); delete it and rerun to encode the split again")
    return SplitFeatures(keys=json.loads(metadata["keys"]),
                         word_strings=None if strings is None else json.loads(strings), **tensors)


def cached_features(path: Path, encode: Callable[[], SplitFeatures]) -> SplitFeatures:
    """The features stored at `path`, made by `encode()` on first use.

    `path` must name everything the features depend on (the evaluation context builds it), so a
    hit is always the answer to the same question.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second job waits here, then reads the file
        if path.is_file():
            return load_features(path)
        feats = encode()
        save_features(feats, path)
        return feats
