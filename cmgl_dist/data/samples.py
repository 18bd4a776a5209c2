"""One shard sample -> one training example, and the count of samples that could not be used.

Two stages, split by cost. `parse` is cheap (JSON, label keys, image header and PNG CRCs, no pixel
decoding) and runs before the resume skip, so a sample it rejects shifts the stream the same way
in a fresh and in a resumed run. `to_example` decodes and augments, and runs only on samples that
will be batched.
"""
from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from typing import Optional

import torch

from cmgl_dist.data import images
from cmgl_dist.data.device_decode import require_jpeg
from cmgl_dist.data.text_cleaning import gloria_sentences
from cmgl_dist.data.seeds import seed_of
from cmgl_dist.data.text import tokenize_texts
from cmgl_dist.shards.schema import FRONTAL_MEMBERS, LABEL_KEYS, LABELS, META, PATHOLOGIES, REPORT

log = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w")


class SkipCounter:
    """Counts unusable samples by reason and logs them, rate-limited per reason.

    `take()` returns the count since the last call; the loader puts it in each batch, so the
    counts cross DataLoader worker processes inside the batches themselves. A tar that breaks
    off counts each sample the manifest lists for it that it did not yield (reason
    `unreadable_shard_data`; once per read error where the manifest gives no count).
    """

    LOG_FIRST = 5

    def __init__(self):
        self.by_reason: dict[str, int] = {}
        self._pending = 0

    def skip(self, reason: str, key: str, error: BaseException | str) -> None:
        n = self.by_reason.get(reason, 0) + 1
        self.by_reason[reason] = n
        self._pending += 1
        if n <= self.LOG_FIRST or n & (n - 1) == 0:  # the first few, then at powers of two
            log.warning("skipping sample %s (%s, %d so far in this worker): %s", key, reason, n, error)

    def take(self) -> int:
        pending, self._pending = self._pending, 0
        return pending


@dataclass(frozen=True)
class Record:
    """A sample that passed the cheap checks; `pass_index` counts the stream's passes over shards."""

    key: str
    frontal: bytes  # the encoded image, in the pack's --format
    report: dict
    labels: tuple[float, ...]
    pass_index: int


def _labelled_only(sample: dict) -> bool:
    """A sample of a corpus packed with `--source` (meta.json names it) may come without a report."""
    try:
        return "source" in json.loads(sample.get(META, b"{}"))
    except ValueError:
        return False


def parse(sample: dict, pass_index: int, counter: SkipCounter, require_text: bool = True) -> Optional[Record]:
    """`require_text`: contrastive training needs report text; evaluation and label prompts do not."""
    key = sample.get("__key__", "?")
    try:
        frontal = next((m for m in FRONTAL_MEMBERS if m in sample), FRONTAL_MEMBERS[0])
        needed = (frontal, LABELS) if _labelled_only(sample) else (frontal, REPORT, LABELS)
        missing = [m for m in needed if m not in sample]
        if missing:
            raise ValueError(f"missing member(s) {', '.join(missing)}")
        report = json.loads(sample[REPORT]) if REPORT in sample else {}
        labels_json = json.loads(sample[LABELS])
        if not isinstance(report, dict) or not isinstance(labels_json, dict):
            raise ValueError(f"{REPORT} and {LABELS} must hold JSON objects")
        absent = [k for k in LABEL_KEYS if k not in labels_json]
        if absent:
            raise ValueError(f"{LABELS} lacks {', '.join(absent)}")
        labels = tuple(float(labels_json[k]) for k in LABEL_KEYS)
        if require_text and not report_sentences(report):
            raise ValueError("no findings or impression text (label-only corpora train with data.text_from_labels=true)")
        images.verify_image(sample[frontal], frontal.partition(".")[2])
    except Exception as e:  # noqa: BLE001 - any malformed member makes the sample unusable
        counter.skip("malformed", key, e)
        return None
    return Record(key, sample[frontal], report, labels, pass_index)


def report_text(report: dict) -> str:
    """Findings then impression, space-joined (the packer has already removed `XXXX` tokens)."""
    parts = [str(report.get(section) or "").strip() for section in ("findings", "impression")]
    return " ".join(p for p in parts if p)


def report_sentences(report: dict) -> list[str]:
    return [s for s in _SENTENCE_END.split(report_text(report)) if _WORD.search(s)]


def label_text(labels: tuple[float, ...]) -> str:
    """A report-like sentence built from the labels, for samples without a report
    (`data.text_from_labels`): the positive pathologies, else normal, else their absence."""
    named = dict(zip(LABEL_KEYS, labels))
    positive = [p.replace("_", " ") for p in PATHOLOGIES if named[p] > 0.5]
    if positive:
        return "Findings: " + ", ".join(positive) + "."
    if named["normal"] > 0.5:
        return "No acute cardiopulmonary abnormality."
    return "No atelectasis, cardiomegaly, edema, pleural effusion or consolidation."


def choose_text(record: Record, text_mode: str, seed: int, epoch: int, text_from_labels: bool = False,
                text_cleaning: str = "none", captions_per_image: int = 5) -> str:
    """The report (or one sampled sentence); without report text, the label sentence when
    `text_from_labels`, else "" (evaluation of a label-only corpus never reads it). With
    `text_cleaning` gloria, the report is GLoRIA's cleaned sentences (`text_cleaning`)."""
    sentences = report_sentences(record.report)
    if not sentences:
        return label_text(record.labels) if text_from_labels else ""
    if text_cleaning == "gloria":
        # A report whose every sentence has one word (GLoRIA drops it from training) keeps its text.
        sentences = gloria_sentences(report_text(record.report), captions_per_image) or sentences
        if text_mode == "report":
            return " ".join(sentences)
    elif text_mode == "report":
        return report_text(record.report)
    rng = random.Random(seed_of("sentence", seed, epoch, record.key, record.pass_index))
    return sentences[rng.randrange(len(sentences))]


def to_example(record: Record, data_cfg, *, train: bool, seed: int, epoch: int,
               counter: SkipCounter) -> Optional[dict]:
    """Decode, crop/augment and pick the text; None (counted) if the image will not decode.
    With data.decode=gpu the image stays encoded: the example carries its JPEG bytes and the
    view's random draws (`device_decode`)."""
    if data_cfg.decode == "gpu":
        return _encoded_example(record, data_cfg, train=train, seed=seed, epoch=epoch)
    try:
        square = images.square_resize(images.decode_grey(record.frontal, data_cfg.image_size), data_cfg.image_size,
                                      data_cfg.resize)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a broken image
        counter.skip("undecodable_image", record.key, e)
        return None
    if train:
        view = images.train_view(square, data_cfg.crop_size, _view_rng(record, seed, epoch), data_cfg.augment,
                                 data_cfg.augmentation)
    else:
        view = images.eval_view(square, data_cfg.crop_size)
    return {"key": record.key, "image": images.normalise_to_rgb(view, data_cfg.normalisation), **_text_and_labels(record, data_cfg, seed, epoch)}


def _view_rng(record: Record, seed: int, epoch: int) -> random.Random:
    return random.Random(seed_of("augment", seed, epoch, record.key, record.pass_index))


def _text_and_labels(record: Record, data_cfg, seed: int, epoch: int) -> dict:
    return {"text": choose_text(record, data_cfg.text_mode, seed, epoch, data_cfg.text_from_labels,
                                data_cfg.text_cleaning, data_cfg.captions_per_image),
            "labels": torch.tensor(record.labels, dtype=torch.float32)}


def _encoded_example(record: Record, data_cfg, *, train: bool, seed: int, epoch: int) -> dict:
    require_jpeg(record.key, record.frontal)
    view = (images.draw_view(_view_rng(record, seed, epoch), data_cfg.image_size, data_cfg.crop_size)
            if train and data_cfg.augment else None)
    return {"key": record.key, "jpeg": record.frontal, "view": view, **_text_and_labels(record, data_cfg, seed, epoch)}


def collate(examples: list[dict], tokenizer, max_length: int, skipped: int, special_words: str = "none") -> dict:
    """A batch of examples: images stacked (or JPEG bytes for the device decoder), texts tokenized."""
    texts = [e["text"] for e in examples]
    if "jpeg" in examples[0]:  # data.decode=gpu: decoded by ShardLoader on the device
        pixels = {"jpeg": [e["jpeg"] for e in examples], "views": [e["view"] for e in examples]}
    else:
        pixels = {"images": torch.stack([e["image"] for e in examples])}
    return {
        **pixels,
        **tokenize_texts(tokenizer, texts, max_length, special_words),
        "labels": torch.stack([e["labels"] for e in examples]),
        "keys": [e["key"] for e in examples],
        "texts": texts,
        "skipped": skipped,
    }
