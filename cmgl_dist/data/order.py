"""The world-size-free training order (`data.order=global`): one permutation of the epoch's samples,
whatever the number of ranks and loader workers.

The order of epoch e is a function of (seed, e) and the pack only: every corpus's samples (in
manifest shard order, tar order within a shard) are shuffled by `seed_of("order", seed, e, corpus,
pass)`; several corpora (`data.sources`) are interleaved by weight with the rule of
`streams.mixed_records` (each position goes to the corpus furthest below its share). An epoch has
`floor(samples / G) * G` positions for the global batch G, so it ends on an optimizer step.

Global step s takes positions [s*G, (s+1)*G). Within it, micro step a takes the next
world_size * micro_batch positions, and rank r the r-th run of micro_batch of them; so rank r's
b-th batch of the epoch holds positions b*W*m + r*m ... + m - 1 (W ranks, m per micro batch), and
the union over ranks of a step's batches is the same G samples at any W and m with m*a*W = G.
DataLoader worker p of P builds batches start+p, start+p+P, ... (the DataLoader takes batch j from
worker j % P), so workers change only who decodes. A resume starts at any batch boundary:
positions are computed, never skipped over, and a resume at another world size starts at the
same position (`TrainState.data_samples`).

Per-sample randomness (crop, sentence choice) is seeded by (seed, epoch, key, pass), as before.
Samples are read by member offsets (`tar_index`), so only local shards can be ordered this way;
remote packs keep the streaming order (`streams`), whose order depends on the world size.

A slot whose sample cannot be used (malformed, undecodable, unreadable) is filled with a repeat of
the next usable sample of the same micro batch and counted as a skip, so every rank still gets a
full batch and the following positions do not move. Samples the manifest lists but the shards lack
(a missing shard under data.on_missing_shard=skip, a truncated tar) are not in the order; they are
counted once per epoch, in rank 0's first batch.
"""
from __future__ import annotations

import logging
import multiprocessing
import random
from typing import Iterator, Optional, Sequence

from torch.utils.data import IterableDataset, get_worker_info

from cmgl_dist.config import DataConfig
from cmgl_dist.data.samples import SkipCounter, collate, parse, to_example
from cmgl_dist.data.seeds import seed_of
from cmgl_dist.data.shardlist import Mixture, is_passthrough
from cmgl_dist.data.streams import ShardMissingError
from cmgl_dist.data.tar_index import SampleEntry, SampleReader, index_shard

log = logging.getLogger(__name__)


def uses_global_order(data_cfg: DataConfig, urls: Sequence[str]) -> bool:
    """Whether training reads in the global order (data.order; `auto`: local shards without
    data.resample). ValueError when data.order=global cannot be honoured."""
    remote = [u for u in urls if is_passthrough(u)]
    if data_cfg.order == "global":
        if remote:
            raise ValueError(f"data.order=global reads shards by member offset and needs local shards ({remote[0]} "
                             "is remote): copy the pack to local disk, or set data.order=stream")
        if data_cfg.resample:
            raise ValueError("data.order=global makes one permutation per epoch: set data.resample=false, "
                             "or data.order=stream")
        return True
    return data_cfg.order == "auto" and not remote and not data_cfg.resample


def index_mixture(mixture: Mixture, on_missing_shard: str,
                  expected: Optional[Sequence[int]] = None) -> tuple[list[list[tuple[str, SampleEntry]]], int]:
    """Per corpus, its samples as (shard url, entry) in manifest order, and how many samples the
    manifest lists (`expected`, per url) that are not there. A missing shard fails (ShardMissingError)
    unless data.on_missing_shard=skip; a shard that breaks off keeps what was indexed before the
    break. Both are logged; the lost samples are counted once per epoch (`OrderedBatches`)."""
    corpora, lost = [], 0
    expected_by_url = dict(zip(mixture.urls, expected)) if expected is not None else {}
    for urls, _ in mixture.parts:
        samples = []
        for url in urls:
            try:
                index = index_shard(url)
            except FileNotFoundError:
                if on_missing_shard == "fail":
                    raise ShardMissingError(f"shard {url} is missing: repack, or set data.on_missing_shard=skip "
                                            "to go on without it") from None
                log.warning("shard %s is missing: its samples are left out of the epoch order", url)
                lost += expected_by_url.get(url, 0)
                continue
            if index.error:
                log.warning("shard %s breaks off after %d samples (%s): the rest are left out of the epoch order",
                            url, len(index.samples), index.error)
            samples.extend((url, entry) for entry in index.samples)
            lost += max(0, expected_by_url.get(url, 0) - len(index.samples))
        corpora.append(samples)
    return corpora, lost


def epoch_order(sizes: Sequence[int], weights: Sequence[float], seed: int, epoch: int,
                length: int) -> list[tuple[int, int, int]]:
    """The first `length` positions of the epoch as (corpus, sample index, pass): a function of
    (sizes, weights, seed, epoch) only."""
    if any(size == 0 for size in sizes):
        raise ValueError("a corpus of the mixture has no readable sample")
    shares = [w / sum(weights) for w in weights]
    taken = [0] * len(sizes)
    permutations: dict[tuple[int, int], list[int]] = {}
    order = []
    for drawn in range(1, length + 1):
        corpus = 0 if len(sizes) == 1 else max(range(len(sizes)), key=lambda i: (shares[i] * drawn - taken[i], -i))
        pass_index, within = divmod(taken[corpus], sizes[corpus])
        if (corpus, pass_index) not in permutations:
            perm = list(range(sizes[corpus]))
            random.Random(seed_of("order", seed, epoch, corpus, pass_index)).shuffle(perm)
            permutations[(corpus, pass_index)] = perm
        order.append((corpus, permutations[(corpus, pass_index)][within], pass_index))
        taken[corpus] += 1
    return order


def rank_positions(batch: int, rank: int, world_size: int, micro_batch: int) -> range:
    """Epoch positions of `rank`'s `batch`-th micro batch (see the module docstring)."""
    start = batch * world_size * micro_batch + rank * micro_batch
    return range(start, start + micro_batch)


class EpochPosition:
    """(epoch, start_batch) in shared memory: persistent loader workers keep their dataset object from
    the first epoch on, and read the position `ShardLoader.set_epoch` wrote when the next epoch starts."""

    def _init_position(self, epoch: int, start_batch: int) -> None:
        self._position = multiprocessing.Array("q", [epoch, start_batch], lock=False)

    @property
    def epoch(self) -> int:
        return self._position[0]

    @property
    def start_batch(self) -> int:
        return self._position[1]

    def set_position(self, epoch: int, start_batch: int) -> None:
        self._position[0], self._position[1] = epoch, start_batch


class OrderedBatches(EpochPosition, IterableDataset):
    """One rank's batches of the world-size-free order; the same interface as `loader.ShardBatches`
    (position in shared memory for persistent workers, `cfg`, `start_batch`)."""

    def __init__(self, corpora: list[list[tuple[str, SampleEntry]]], weights: Sequence[float], data_cfg: DataConfig,
                 tokenizer, *, batch_size: int, seed: int, rank: int, world_size: int, epoch: int, start_batch: int,
                 batches_per_epoch: int, lost: int = 0):
        super().__init__()
        self.corpora, self.weights = corpora, tuple(weights)
        self.cfg = data_cfg
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._init_position(epoch, start_batch)
        self.batches_per_epoch = batches_per_epoch
        self.workers = max(1, data_cfg.workers)
        self._reader = SampleReader()
        self.lost = lost  # samples the manifest lists but the shards lack: counted in rank 0's first batch

    def order(self) -> list[tuple[int, int, int]]:
        length = self.batches_per_epoch * self.world_size * self.batch_size
        return epoch_order([len(c) for c in self.corpora], self.weights, self.seed, self.epoch, length)

    def __iter__(self) -> Iterator[dict]:

        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"DataLoader has {info.num_workers} workers, data.workers={self.cfg.workers}")
        order = self.order()
        for batch in range(self.start_batch + worker, self.batches_per_epoch, self.workers):
            counter = SkipCounter()
            for _ in range(self.lost if batch == 0 and self.rank == 0 else 0):
                counter.skip("missing_or_broken_shard", "-", "listed in the manifest, not in the shards")
            slots = [self._example(order[p], counter) for p in rank_positions(batch, self.rank, self.world_size,
                                                                               self.batch_size)]
            yield collate(fill_unusable(slots, batch), self.tokenizer, self.cfg.max_length, counter.take(),
                          self.cfg.special_words)

    def _example(self, place: tuple[int, int, int], counter: SkipCounter) -> Optional[dict]:
        corpus, index, pass_index = place
        url, entry = self.corpora[corpus][index]
        try:
            sample = self._reader.read(url, entry)
        except OSError as err:
            if isinstance(err, FileNotFoundError) and self.cfg.on_missing_shard == "fail":
                raise ShardMissingError(f"shard {url} is missing ({err}): repack, or set "
                                        "data.on_missing_shard=skip to go on without it") from None
            counter.skip("unreadable_shard_data", entry.key, err)
            return None
        record = parse(sample, pass_index, counter, require_text=not self.cfg.text_from_labels)
        if record is None:
            return None
        return to_example(record, self.cfg, train=True, seed=self.seed, epoch=self.epoch, counter=counter)


def fill_unusable(slots: list[Optional[dict]], batch: int) -> list[dict]:
    """Each unusable slot (None) takes the next usable example of the micro batch (cyclically)."""
    usable = [i for i, example in enumerate(slots) if example is not None]
    if not usable:
        raise RuntimeError(f"no usable sample in micro batch {batch}: the shards are unreadable")
    return [example if example is not None else slots[next((u for u in usable if u > i), usable[0])]
            for i, example in enumerate(slots)]

