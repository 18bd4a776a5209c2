"""`make_loader`: shard URLs -> batches, the same number on every rank, resumable mid-epoch.

Training reads in one of two orders (data.order): the world-size-free global order of
`cmgl_dist.data.order` (local shards, random access; the default for them), or the streaming
order described here, where each rank and worker reads its own split of the shards (remote packs).

Per (rank, DataLoader worker) the pipeline is open_clip's `get_wds_dataset` shape:
shards split by rank and worker -> samples (a bad one is counted, logged and skipped) ->
shuffle buffer -> decode + augment -> batch (+ tokenize) -> cut at this worker's share of the epoch.

Training: every rank yields exactly `batches_per_epoch` batches (default
floor(samples / (world_size * batch_size))). Each worker's stream repeats over its shards
(reshuffled per pass), so no rank runs dry while another still has batches, and a collective never
waits on a rank that has stopped.

Exact resume: the DataLoader takes batch j from worker j % workers. Worker w therefore produces
the epoch's batches w, w + workers, ... ("logical worker" w). A loader started at `start_batch=k`
lets physical worker p play logical worker (p + k) % workers, which skips the samples of that
worker's batches before k undecoded and then yields exactly what the uninterrupted run would have.
All randomness is seeded from (seed, epoch, stream) or (seed, epoch, sample key, pass), so the
batches from k on equal those of a fresh run, images and texts included. One caveat: a PNG whose
chunks are intact but whose pixel data will not decode is found only after the skip point; a
resumed run cannot know it was dropped earlier, so batches of that worker after it shift by one
sample (counted and logged like any other skip).

Evaluation (`train=False`): one ordered pass, centre crops, every sample exactly once across
ranks and workers, the last batch of each worker may be short. Ranks may get different batch
counts, so use it with world_size=1 or gather results without per-batch collectives. Its `len()`
counts the manifest's samples, so skipped samples can make the pass shorter than `len()`.

Skipped samples: each batch carries `skipped`, the samples its worker dropped since its previous
batch (malformed, undecodable, unreadable shard data); their sum is the epoch's count (skips
after a worker's last batch are logged but reach no batch). A shard that breaks off counts the
samples the manifest lists for it that it did not yield; a missing shard fails the loader
(ShardMissingError) unless data.on_missing_shard=skip, which counts all of its samples.
"""
from __future__ import annotations

import math
from itertools import islice
from typing import Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cmgl_dist.config import DataConfig
from cmgl_dist.data.device_decode import views_on_device
from cmgl_dist.data.order import EpochPosition, OrderedBatches, index_mixture, uses_global_order
from cmgl_dist.data.samples import SkipCounter, collate, to_example
from cmgl_dist.data.shardlist import Mixture, shard_sample_counts
from cmgl_dist.data.streams import StreamSpec, mixed_records, stream_sample_counts


class ShardBatches(EpochPosition, IterableDataset):
    """Batches of one rank; in a DataLoader each worker process yields its logical worker's share."""

    def __init__(self, mixture: Mixture, data_cfg: DataConfig, tokenizer, *, train: bool, batch_size: int,
                 seed: int, rank: int, world_size: int, epoch: int, start_batch: int,
                 batches_per_epoch: Optional[int], shard_samples: Optional[Sequence[int]] = None):
        super().__init__()
        self.mixture = mixture
        self.cfg = data_cfg
        self.tokenizer = tokenizer
        self.train = train
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._init_position(epoch, start_batch)
        self.batches_per_epoch = batches_per_epoch
        # samples per shard URL (from the manifest), so a broken shard counts what it held
        self.samples_by_url = None if shard_samples is None else dict(zip(mixture.urls, shard_samples))
        self.workers = max(1, data_cfg.workers)

    def spec(self, logical_worker: int, part: int = 0) -> StreamSpec:
        """The stream of one logical worker over one corpus of the mixture."""
        return StreamSpec(
            urls=self.mixture.parts[part][0], seed=self.seed, epoch=self.epoch,
            stream=self.rank * self.workers + logical_worker, streams=self.world_size * self.workers,
            repeat=self.train, shard_shuffle=self.cfg.shard_shuffle, resample=self.train and self.cfg.resample,
            shuffle_buffer=self.cfg.shuffle_buffer if self.train else 0,
            require_text=self.train and not self.cfg.text_from_labels,
            shard_samples=self._counts(self.mixture.parts[part][0]), on_missing_shard=self.cfg.on_missing_shard)

    def _counts(self, urls: Sequence[str]) -> Optional[tuple[int, ...]]:
        return None if self.samples_by_url is None else tuple(self.samples_by_url[u] for u in urls)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"DataLoader has {info.num_workers} workers, data.workers={self.cfg.workers}")
        logical = (physical + self.start_batch) % self.workers
        counter = SkipCounter()
        specs = [self.spec(logical, part) for part in range(len(self.mixture.parts))]
        items = mixed_records(specs, [weight for _, weight in self.mixture.parts], counter)
        if not self.train:
            yield from self._batches(items, counter, limit=None)
            return
        done = len(range(logical, self.start_batch, self.workers))
        for _ in islice(items, done * self.batch_size):
            pass  # already consumed by the interrupted run: skip undecoded
        counter.take()  # those skips were reported in the batches before start_batch
        share = len(range(logical, self.batches_per_epoch, self.workers))
        yield from self._batches(items, counter, limit=share - done)

    def _batches(self, items, counter: SkipCounter, limit: Optional[int]) -> Iterator[dict]:
        if limit == 0:
            return
        emitted, pending = 0, []
        for record in items:
            example = to_example(record, self.cfg, train=self.train, seed=self.seed, epoch=self.epoch,
                                 counter=counter)
            if example is None:
                continue
            pending.append(example)
            if len(pending) == self.batch_size:
                yield collate(pending, self.tokenizer, self.cfg.max_length, counter.take(), self.cfg.special_words)
                pending, emitted = [], emitted + 1
                if emitted == limit:
                    return
        if pending:  # only evaluation streams end
            yield collate(pending, self.tokenizer, self.cfg.max_length, counter.take(), self.cfg.special_words)


class ShardLoader:
    """Iterable of batch dicts; `len()` is the number of batches it yields (from `start_batch` on)."""

    def __init__(self, dataset: ShardBatches, num_batches: Optional[int], persistent_workers: bool = False,
                 decode_device: Optional[torch.device] = None):
        self.dataset = dataset
        self.decode_device = decode_device  # data.decode=gpu: where batches are decoded
        self.num_batches = num_batches
        self.batches_per_epoch = num_batches + dataset.start_batch if num_batches is not None else None
        # Pinned host batches let `to_device(..., non_blocking=True)` overlap the copy with compute.
        self._loader = DataLoader(
            dataset, batch_size=None, num_workers=dataset.cfg.workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=persistent_workers and dataset.cfg.workers > 0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> "ShardLoader":
        """Reuse this training loader (and its persistent workers) for `epoch` from `start_batch` on.

        Call it only after the previous epoch's iterator is exhausted: the workers read the new
        position when the next `iter()` restarts them.
        """
        if self.batches_per_epoch is None or not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"set_epoch needs a training loader and 0 <= start_batch <= {self.batches_per_epoch}")
        self.dataset.set_position(epoch, start_batch)
        self.num_batches = self.batches_per_epoch - start_batch
        return self

    def __iter__(self) -> Iterator[dict]:
        if self.decode_device is None:
            return iter(self._loader)
        return (self._decoded(batch) for batch in self._loader)

    def _decoded(self, batch: dict) -> dict:
        """A data.decode=gpu batch with its images decoded and augmented on `decode_device`."""
        views, cfg = batch.pop("views"), self.dataset.cfg
        batch["images"] = views_on_device(batch.pop("jpeg"), None if views[0] is None else views, cfg.image_size,
                                          cfg.crop_size, self.decode_device)
        return batch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("batch count unknown: the shards have no manifest.json with sample counts")
        return self.num_batches


def make_loader(urls: Sequence[str] | Mixture, data_cfg: DataConfig, tokenizer, *, train: bool, batch_size: int,
                seed: int, rank: int = 0, world_size: int = 1, epoch: int = 0, start_batch: int = 0,
                batches_per_epoch: Optional[int] = None, num_samples: Optional[int] = None,
                persistent_workers: bool = False, decode_device: Optional[torch.device | str] = None,
                global_batch: Optional[int] = None) -> ShardLoader:
    """One epoch of `rank`'s batches (see the module docstring). For the next epoch build a new
    loader, or, with `persistent_workers`, call `set_epoch` on this one to keep its workers.

    `urls` is one corpus's shard URLs, or a `Mixture` of several corpora with weights (training
    only): every stream then interleaves them by weight (`streams.mixed_records`), and the epoch
    counts the samples of all of them.

    `num_samples` (the split's size) sets the default epoch length when the shards have no
    manifest.json beside them. The loader's `len()` counts the batches it yields (those from
    `start_batch` on); `batches_per_epoch` holds the whole epoch's count.

    With data.decode=gpu, batches are decoded on `decode_device` (default: the current CUDA device).

    `global_batch` (training, global order): samples per optimizer step over all ranks, so the
    default epoch ends on a whole step (default: world_size * batch_size, no accumulation).
    """
    device = _decode_device(data_cfg, decode_device)
    mixture = urls if isinstance(urls, Mixture) else Mixture.single(urls)
    if not all(part_urls for part_urls, _ in mixture.parts):
        raise ValueError("make_loader needs at least one shard URL")
    if len(mixture.parts) > 1 and not train:
        raise ValueError("evaluation reads one corpus: pass its shard URLs, not a Mixture")
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size (got {batch_size}, {rank}, {world_size})")
    shard_counts = shard_sample_counts(mixture.urls)
    common = dict(train=train, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                  epoch=epoch, start_batch=start_batch, shard_samples=shard_counts)
    if not train:
        if start_batch or batches_per_epoch is not None:
            raise ValueError("evaluation makes one full pass: start_batch and batches_per_epoch are for training")
        dataset = ShardBatches(mixture, data_cfg, tokenizer, batches_per_epoch=None, **common)
        counts = stream_sample_counts(shard_counts, world_size * dataset.workers)
        num_batches = None if counts is None else sum(
            math.ceil(counts[dataset.spec(w).stream] / batch_size) for w in range(dataset.workers))
        return ShardLoader(dataset, num_batches, decode_device=device)

    if uses_global_order(data_cfg, mixture.urls):
        return _global_order_loader(mixture, data_cfg, tokenizer, batch_size=batch_size, seed=seed, rank=rank,
                                    world_size=world_size, epoch=epoch, start_batch=start_batch,
                                    batches_per_epoch=batches_per_epoch, global_batch=global_batch,
                                    persistent_workers=persistent_workers, decode_device=device)
    if batches_per_epoch is None:
        if num_samples is None:
            if shard_counts is None:
                raise ValueError("cannot size the epoch: the shards have no manifest.json; "
                                 "pass num_samples or batches_per_epoch")
            num_samples = sum(shard_counts)
        batches_per_epoch = num_samples // (world_size * batch_size)
        if batches_per_epoch == 0:
            raise ValueError(f"{num_samples} samples make no full batch of {batch_size} on each of "
                             f"{world_size} rank(s): lower the batch size")
    if batches_per_epoch < 1 or not 0 <= start_batch <= batches_per_epoch:
        raise ValueError(f"need batches_per_epoch >= 1 and 0 <= start_batch <= batches_per_epoch "
                         f"(got {batches_per_epoch}, {start_batch})")
    dataset = ShardBatches(mixture, data_cfg, tokenizer, batches_per_epoch=batches_per_epoch, **common)
    return ShardLoader(dataset, batches_per_epoch - start_batch, persistent_workers, device)


def _global_order_loader(mixture: Mixture, data_cfg: DataConfig, tokenizer, *, batch_size: int, seed: int, rank: int,
                         world_size: int, epoch: int, start_batch: int, batches_per_epoch: Optional[int],
                         global_batch: Optional[int], persistent_workers: bool,
                         decode_device: Optional[torch.device]) -> ShardLoader:
    corpora, lost = index_mixture(mixture, data_cfg.on_missing_shard, shard_sample_counts(mixture.urls))
    samples = sum(len(c) for c in corpora)
    per_micro_step = world_size * batch_size
    step = global_batch or per_micro_step
    if step % per_micro_step:
        raise ValueError(f"global batch {step} is not a multiple of {world_size} rank(s) x batch size {batch_size}")
    if batches_per_epoch is None:
        batches_per_epoch = samples // step * (step // per_micro_step)
        if batches_per_epoch == 0:
            raise ValueError(f"{samples} readable samples make no global batch of {step}: lower the batch size")
    if not 0 <= start_batch <= batches_per_epoch:
        raise ValueError(f"need 0 <= start_batch <= batches_per_epoch (got {start_batch}, {batches_per_epoch})")
    dataset = OrderedBatches(corpora, [w for _, w in mixture.parts], data_cfg, tokenizer, batch_size=batch_size,
                             seed=seed, rank=rank, world_size=world_size, epoch=epoch, start_batch=start_batch,
                             batches_per_epoch=batches_per_epoch, lost=lost)
    return ShardLoader(dataset, batches_per_epoch - start_batch, persistent_workers, decode_device)


def _decode_device(data_cfg: DataConfig, device: Optional[torch.device | str]) -> Optional[torch.device]:
    if data_cfg.decode != "gpu":
        return None
    if device is None:
        if not torch.cuda.is_available():
            raise ValueError("data.decode=gpu needs a CUDA device (nvJPEG); set data.decode=cpu on this machine")
        device = torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)
