"""What one evaluation job reads, built once per job: export, settings, shards, features, loaders,
the similarity's gammas, and the key of everything it computes.

Jobs ask the context instead of re-deriving: `ctx.features(split, with_text=...)` (encoded once per
sweep and cached on disk), `ctx.loader(split, ...)`, `ctx.gammas`, `ctx.attention(...)`,
`ctx.save_scores(...)`. Every result is keyed by what it was computed from (`inputs_key`): the
content fingerprints of the export (weights + config) and of the shards (their manifest, which
lists each shard's sha256), the split, the evaluation settings and `RESULTS_VERSION`. A cached feature file or a
recorded result with another key is never reused, so a rerun with another --split, --shards, a
re-export or a repack into the same folder computes afresh.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np

from cmgl_dist.atomic import atomic_path
from cmgl_dist.config import EvalConfig
from cmgl_dist.data.shardlist import shard_urls, shards_fingerprint
from cmgl_dist.evaluate.features import (FEATURES_FORMAT, Export, SplitFeatures, cached_features, encode_split,
                                         export_fingerprint)

# fields of EvalConfig that choose which jobs run, not what a job computes
JOB_LIST_FIELDS = ("probe_fractions", "seeds", "finetune")
# Raised whenever a job computes something else from the same inputs, so that records made by
# older code are not served as answers: 2 = localisation scores the paired reports' words;
# 3 = finding-aware precision leaves out samples whose labels are unknown; 4 = localisation
# renders more phantoms of short findings and bootstraps its figures over reports.
RESULTS_VERSION = 4


@dataclass(frozen=True)
class EvalInputs:
    """Where an evaluation reads and writes, and its settings; what `cmgl evaluate`/`sweep` hand each job."""
    shards: str
    out_dir: str
    settings: EvalConfig

    def key_parts(self, export_fp: str) -> dict:
        """What every result of one export is computed from (the job adds its task, fraction, seed)."""
        settings = self.settings.model_dump(mode="json", exclude=set(JOB_LIST_FIELDS))
        return {"export": export_fp, "shards": shards_fingerprint(self.shards), "settings": settings,
                "results_version": RESULTS_VERSION}

    def expected_key(self, export: str) -> Optional[str]:
        """The key a job of `export` will record, or None when the export cannot be read (the job fails)."""
        try:
            return inputs_key(self.key_parts(export_fingerprint(export)))
        except (FileNotFoundError, OSError):
            return None


def inputs_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class EvalContext:
    """One job's view of its export and data; the model loads on first use (cache hits never pay for it)."""

    def __init__(self, export: str, inputs: EvalInputs):
        self.export = Export(export)
        self.inputs = inputs
        self.settings = inputs.settings
        self.shards = inputs.shards
        self.split = inputs.settings.split
        self.out_dir = Path(inputs.out_dir)
        self.key_parts = inputs.key_parts(self.export.fingerprint)
        self.inputs_key = inputs_key(self.key_parts)
        self._features: dict[tuple[str, bool], SplitFeatures] = {}

    @property
    def model(self):
        return self.export.model

    @property
    def cfg(self):
        return self.export.cfg

    @cached_property
    def gammas(self) -> dict[str, float]:
        """The export's similarity sharpness (loss.gamma1 over regions, loss.gamma2 over words)."""
        return {"gamma1": self.cfg.loss.gamma1, "gamma2": self.cfg.loss.gamma2}

    def attention(self, words, regions):
        """[W, R] word -> region attention of one text over one image, with the export's gamma1."""
        from cmgl_dist.evaluate.similarity import pair_attention_map

        return pair_attention_map(words, regions, self.gammas["gamma1"])

    def loader(self, split: Optional[str] = None, *, train: bool = False, epoch: int = 0):
        """Batches of `split` (default: the evaluated one) through the export's data transform."""
        from cmgl_dist.data import make_loader

        data_cfg = self.cfg.data.model_copy(update={"workers": self.settings.workers})
        return make_loader(shard_urls(self.shards, split or self.split), data_cfg, self.model.tokenizer,
                           train=train, batch_size=self.settings.batch_size, seed=self.cfg.train.seed, epoch=epoch)

    def features(self, split: Optional[str] = None, *, with_text: bool) -> SplitFeatures:
        """Every sample of `split` encoded once; cached in OUT/features under its inputs' key."""
        split = split or self.split
        if (split, with_text) not in self._features:
            self._features[split, with_text] = cached_features(
                self._feature_path(split, with_text),
                lambda: encode_split(self.model, self.loader(split), with_text=with_text,
                                     what=f"split {split!r} of {self.shards}"))
        return self._features[split, with_text]

    def _feature_path(self, split: str, with_text: bool) -> Path:
        loader = {"batch_size": self.settings.batch_size, "workers": self.settings.workers}
        key = inputs_key({"format": FEATURES_FORMAT, "shards": self.key_parts["shards"], "split": split,
                          "loader": loader})
        return self.out_dir / "features" / self.export.fingerprint / f"{split}-{key}{'-text' if with_text else ''}.safetensors"

    def save_scores(self, name: str, **arrays: np.ndarray) -> str:
        """OUT/scores/<name>-<inputs key>.npz, written atomically; returns its path relative to OUT.

        The key in the name keeps a record's file its own when a rerun with other inputs (another
        split) writes the same job's scores."""
        folder = self.out_dir / "scores"
        folder.mkdir(parents=True, exist_ok=True)
        file = f"{name}-{self.inputs_key}.npz"
        with atomic_path(folder / file, suffix=".tmp.npz") as tmp:
            np.savez_compressed(tmp, **arrays)
        return str(Path("scores") / file)
