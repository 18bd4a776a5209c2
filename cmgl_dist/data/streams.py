"""Which samples each (rank, logical worker) reads, in which order: a pure function of the seed.

A *stream* is one (rank, logical worker) pair, `stream = rank * workers + worker`, of
`streams = world_size * workers`. Its samples are determined by (urls, seed, epoch, stream) alone,
never by process ids, clocks or a global RNG, which is what makes a resumed epoch replay the
same batches.

Splitting:
- At least as many shards as streams: each pass over the data shuffles the shard list (the same
  permutation on every stream) and stream s reads shards s, s + streams, ...
- Fewer shards than streams: every stream reads every shard and keeps the samples whose running
  index within the pass is s modulo streams. Reading is duplicated `streams` times, decoding is
  not; it keeps every (rank, worker) busy on a small pack.
- Resampling: each stream draws shards with replacement from its own RNG (no split needed).

Training streams repeat (pass after pass, reshuffled) so that every rank can fill the same
number of batches; evaluation streams make one pass in order. When the shards do not divide
evenly over the streams, a stream with fewer samples starts its next pass before the others end
theirs, so an epoch repeats some samples and misses others: pack a multiple of
world_size * workers shards (of equal size) for epochs that see every sample once.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import random
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import webdataset as wds

from cmgl_dist.data.samples import Record, SkipCounter, parse
from cmgl_dist.data.seeds import seed_of
from cmgl_dist.data.shardlist import is_passthrough
from cmgl_dist.redact import redact
from cmgl_dist.shards.remote import tar_samples


class ShardMissingError(FileNotFoundError):
    """A shard the manifest lists is gone, and data.on_missing_shard=fail."""


@dataclass(frozen=True)
class StreamSpec:
    urls: tuple[str, ...]
    seed: int
    epoch: int
    stream: int
    streams: int
    repeat: bool  # training: cycle over the data; evaluation: one pass
    shard_shuffle: bool
    resample: bool
    shuffle_buffer: int  # 0 or 1: no sample shuffle
    require_text: bool = True  # training without data.text_from_labels: a sample without a report is skipped
    shard_samples: Optional[tuple[int, ...]] = None  # per url, from the manifest (None: unknown)
    on_missing_shard: str = "fail"  # data.on_missing_shard

    def expected_samples(self, url: str) -> Optional[int]:
        return None if self.shard_samples is None else self.shard_samples[self.urls.index(url)]


@dataclass(frozen=True)
class Lost:
    """Stands in a shard's stream for one sample that could not be read (counted as one skip)."""
    url: str
    reason: str
    error: Union[BaseException, str]


def read_shard(url: str, counter: SkipCounter, spec: StreamSpec) -> Iterator[Union[dict, Lost]]:
    """Raw samples of one tar (local path, `pipe:` or remote URL, opened by webdataset), then one
    `Lost` for each sample the manifest lists but the tar did not yield (a shard that breaks off,
    or a missing one under data.on_missing_shard=skip). Without a manifest count, a read error
    counts as one lost sample. A remote shard that delivers not one byte (HTTP error status such
    as 404, a pipe: command that exits non-zero) is a missing shard; one that breaks off after
    some bytes counts the samples it lost."""
    expected = spec.expected_samples(url)
    if not is_passthrough(url) and not os.path.exists(url):
        yield from _missing(url, "no such file", spec)
        return
    errors: list[Exception] = []

    def handler(error: Exception) -> bool:
        errors.append(error)
        return True  # keep what is readable and continue with the next member or shard

    read = 0
    stream, samples = tar_samples(url, handler)
    try:
        for sample in samples:
            read += 1
            yield sample
        if read == 0 and errors and is_passthrough(url) and stream.delivered == 0:
            yield from _missing(url, _why_nothing(stream, errors[0]), spec)
            return
    finally:  # also when the reader stops mid-shard: a pipe: command then ends on SIGPIPE, no error
        with contextlib.suppress(Exception):
            stream.close()
    error = errors[0] if errors else "fewer samples than the manifest lists"
    lost = len(errors) if expected is None else max(0, expected - read)
    yield from (Lost(url, "unreadable_shard_data", error) for _ in range(lost))


def _why_nothing(stream, error: Exception) -> str:
    """Why a remote shard gave not one byte (an HTTP error such as 404, a pipe: command that
    failed, an empty response): the opener's exit status, which a pipe: command reports only when
    its stream is closed. A shard that sent some bytes and broke off is not missing: it counts
    the samples it lost."""
    try:
        stream.close()
    except Exception as status:  # noqa: BLE001 - the opener's failure, reported as the reason
        return redact(str(status))
    return redact(str(error.args[0] if error.args else error))


def _missing(url: str, error: str, spec: StreamSpec) -> Iterator[Lost]:
    if spec.on_missing_shard == "fail":
        raise ShardMissingError(f"shard {redact(url)} is missing ({error[:200]}): repack, or set data.on_missing_shard=skip "
                                "to go on without it (its samples are counted as skipped)")
    return (Lost(url, "missing_shard", error) for _ in range(spec.expected_samples(url) or 1))


def _usable(item: Union[dict, Lost], counter: SkipCounter) -> Optional[dict]:
    """The raw sample, or None after counting a lost one."""
    if isinstance(item, Lost):
        counter.skip(item.reason, item.url, item.error)
        return None
    return item


def _pass_order(spec: StreamSpec, pass_index: int) -> list[str]:
    order = list(spec.urls)
    if spec.repeat and spec.shard_shuffle:
        random.Random(seed_of("shards", spec.seed, spec.epoch, pass_index)).shuffle(order)
    return order


def _one_pass(spec: StreamSpec, pass_index: int, counter: SkipCounter) -> Iterator[dict]:
    """This stream's raw samples of one pass; lost ones are counted by the stream they belonged to."""
    order = _pass_order(spec, pass_index)
    if len(order) >= spec.streams:
        for url in order[spec.stream::spec.streams]:
            yield from filter(None, (_usable(item, counter) for item in read_shard(url, counter, spec)))
        return
    index = 0
    for url in order:
        for item in read_shard(url, counter, spec):
            if index % spec.streams == spec.stream:
                sample = _usable(item, counter)
                if sample is not None:
                    yield sample
            index += 1


def records(spec: StreamSpec, counter: SkipCounter) -> Iterator[Record]:
    """This stream's parsed samples, shuffled; malformed ones are counted and left out.

    The shuffle buffer is drained at the end of every pass, so a pass yields each of the stream's
    samples once (a training epoch no longer than one pass partitions the split across ranks).
    Raises RuntimeError when a repeating stream finds no usable sample in a whole pass: it would
    otherwise spin forever while the other ranks wait for it at the next collective.
    """
    if not spec.urls:
        raise ValueError("no shard URLs given")
    if spec.resample:
        yield from _shuffled(_resampled_records(spec, counter), spec, "resampled")
        return
    for pass_index in itertools.count():
        parsed = (parse(sample, pass_index, counter, spec.require_text) for sample in _one_pass(spec, pass_index, counter))
        usable = 0
        for record in _shuffled((r for r in parsed if r is not None), spec, pass_index):
            usable += 1
            yield record
        if not spec.repeat:
            return
        if usable == 0:
            raise RuntimeError(
                f"stream {spec.stream} of {spec.streams} found no usable sample in a full pass over "
                f"{len(spec.urls)} shard(s): the shards are unreadable or hold fewer samples than "
                "world_size * workers")


def mixed_records(specs: Sequence[StreamSpec], weights: Sequence[float], counter: SkipCounter) -> Iterator[Record]:
    """Several corpora's streams interleaved by weight (`data.sources`).

    Each next sample comes from the corpus furthest below its share so far (largest
    `weight_i / sum(weights) * n - taken_i`, ties to the first), so every prefix of the stream
    holds each corpus within one sample of its share. The choice depends only on how many
    samples came before, so skipping the first k records on resume replays the rest exactly.
    Each corpus's own stream is the usual seeded, repeating one; only training streams mix.
    """
    if len(specs) == 1:
        yield from records(specs[0], counter)
        return
    if not all(spec.repeat for spec in specs):
        raise ValueError("corpora are mixed for training only: evaluate one corpus at a time")
    streams = [records(spec, counter) for spec in specs]
    shares = [w / sum(weights) for w in weights]
    taken = [0] * len(specs)
    for drawn in itertools.count(1):
        index = max(range(len(specs)), key=lambda i: (shares[i] * drawn - taken[i], -i))
        taken[index] += 1
        yield next(streams[index])


def _resampled_records(spec: StreamSpec, counter: SkipCounter) -> Iterator[Record]:
    rng = random.Random(seed_of("resample", spec.seed, spec.epoch, spec.stream))
    fruitless_draws = 0
    for draw in itertools.count():
        url = rng.choice(spec.urls)
        usable = 0
        for item in read_shard(url, counter, spec):
            sample = _usable(item, counter)
            record = None if sample is None else parse(sample, draw, counter, spec.require_text)
            if record is not None:
                usable += 1
                yield record
        fruitless_draws = 0 if usable else fruitless_draws + 1
        if fruitless_draws > 4 * len(spec.urls):
            raise RuntimeError(f"stream {spec.stream}: {fruitless_draws} shard draws in a row gave no usable "
                               f"sample (last: {url}); the shards are unreadable")


def _shuffled(items: Iterator[Record], spec: StreamSpec, part) -> Iterator[Record]:
    """webdataset's shuffle buffer, filled before the first draw, with this stream's own RNG."""
    if spec.shuffle_buffer <= 1:
        return items
    rng = random.Random(seed_of("samples", spec.seed, spec.epoch, spec.stream, part))
    return wds.shuffle(spec.shuffle_buffer, initial=spec.shuffle_buffer, rng=rng)(items)


def stream_sample_counts(shard_counts: Optional[Sequence[int]], streams: int) -> Optional[list[int]]:
    """Samples each stream reads in one unshuffled pass (evaluation), if shard counts are known."""
    if shard_counts is None:
        return None
    if len(shard_counts) >= streams:
        return [sum(shard_counts[s::streams]) for s in range(streams)]
    total = sum(shard_counts)
    return [len(range(s, total, streams)) for s in range(streams)]
