"""Shard jobs, whatever the corpus: write one shard from a task, run every task of a pack.

Both packers (`pack.py` for IU-RR, `corpus_pack.py` for the other corpora) plan their shards as
tasks (`ShardJob`) and hand a `render(task) -> (samples, written, images, skips)` that computes a
shard's content without writing anything; everything that writes lives here.

A finished shard leaves a sidecar `.progress/<shard>.json` (its task fingerprint, sha256 and
per-sample record), written before the shard is renamed into place: a shard counts as done only
when both agree, so an interrupted pack resumes without redoing finished shards. Only the pack
folder's writer (the process holding its claim) commits shards; worker processes and Ray tasks
only render.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import multiprocessing
import sys
from pathlib import Path
from typing import Callable, Optional, Protocol

from PIL import Image
from tqdm import tqdm

from cmgl_dist.shards.images import encode_image
from cmgl_dist.shards.reports import Skip
from cmgl_dist.shards.writer import sha256_file, write_json_atomic, write_shard
from cmgl_dist.untrusted import json_loads

PROGRESS_DIR = ".progress"

# (samples [(key, members)], written [per-sample record], images written, skips)
Rendered = tuple[list, list[dict], int, list[Skip]]


class ShardJob(Protocol):
    """What a packer's shard task offers the jobs here (`plan.ShardTask`, `corpus_pack.CorpusShardTask`)."""
    name: str
    split: str
    out_dir: str
    image_format: str
    quality: Optional[int]

    def fingerprint(self) -> str: ...

    def __len__(self) -> int: ...  # samples planned for the shard


@functools.cache
def code_digest(*modules: str) -> str:
    """sha256 over the source of the modules (by name, in `cmgl_dist.shards`) that produce a
    shard's bytes: a task's fingerprint covers its code, so changing any of them re-renders every
    shard. The files are found, not imported, so a plan need not import what renders it."""
    digest = hashlib.sha256()
    for name in modules:
        digest.update(Path(importlib.util.find_spec(f"cmgl_dist.shards.{name}").origin).read_bytes())
    return digest.hexdigest()


def encode(image: Image.Image, task: ShardJob) -> bytes:
    """One image member in the task's --format (and --quality)."""
    return encode_image(image, task.image_format, task.quality)


def progress_record(out: Path, name: str) -> dict | None:
    """The progress record of shard `name` when both it and the shard are on disk, else None."""
    shard, sidecar = out / name, out / PROGRESS_DIR / f"{name}.json"
    if not (shard.exists() and sidecar.exists()):
        return None
    try:
        record = json_loads(sidecar.read_bytes())
    except ValueError:  # a damaged record vouches for nothing: the shard is redone
        return None
    return record if isinstance(record, dict) else None


def finished_record(out: Path, name: str, fingerprint: str) -> dict | None:
    """The progress record of a shard already written for this exact task, else None."""
    record = progress_record(out, name)
    if record and record.get("fingerprint") == fingerprint and record.get("sha256") == sha256_file(out / name):
        return {**record, "resumed": True}
    return None


def commit_shard(out: Path, name: str, split: str, fingerprint: str, samples: list, written: list[dict],
                 images: int, skips: list[Skip]) -> dict:
    """Write the tar under a temporary name, then its progress record, then rename it into place."""
    sidecar = out / PROGRESS_DIR / f"{name}.json"
    sidecar.parent.mkdir(exist_ok=True)
    tmp_shard = out / f".{name}.unrenamed"
    sha256 = write_shard(tmp_shard, samples)
    record = {"name": name, "split": split, "fingerprint": fingerprint, "sha256": sha256,
              "bytes": tmp_shard.stat().st_size, "samples": written, "images_written": images,
              "skips": [s.to_json() for s in skips]}
    write_json_atomic(sidecar, record)
    tmp_shard.replace(out / name)
    return {**record, "resumed": False}


def commit_rendered(render: Callable[[ShardJob], Rendered], task: ShardJob, fingerprint: str,
                    content: Rendered | None) -> dict:
    """The task's progress record once its shard is on disk: `content` committed, or with none
    given, the shard already finished for `fingerprint` kept, else rendered here and committed."""
    out = Path(task.out_dir)
    if content is None:
        if (record := finished_record(out, task.name, fingerprint)) is not None:
            return record
        content = render(task)
    return commit_shard(out, task.name, task.split, fingerprint, *content)


def pack_task(render: Callable[[ShardJob], Rendered], task: ShardJob) -> dict:
    """Write one shard (unless already finished) and return its progress record."""
    return commit_rendered(render, task, task.fingerprint(), None)


def run_tasks(render: Callable[[ShardJob], Rendered], tasks: list[ShardJob], workers: int,
              ray_address: str | None = None) -> list[dict]:
    """Every task's progress record: shards rendered by `render` and written (`pack_task`) on a
    forkserver pool (in this process for one worker or one task), or rendered as Ray tasks on a
    cluster when `ray_address` is given ("" starts or joins the default one) and written here."""
    sizes = {t.name: len(t) for t in tasks}
    parallel = workers > 1 and len(tasks) > 1 and ray_address is None
    pool = multiprocessing.get_context("forkserver").Pool(workers) if parallel else contextlib.nullcontext()
    worker = functools.partial(pack_task, render)
    results = []
    with tqdm(total=sum(sizes.values()), unit="sample", desc="pack", disable=None, file=sys.stderr) as bar, pool:
        if ray_address is not None:
            from cmgl_dist.shards.ray_pack import render_on_ray

            recorded = [(t, (progress_record(Path(t.out_dir), t.name) or {}).get("fingerprint")) for t in tasks]
            done = (commit_rendered(render, task, fingerprint, content)
                    for task, fingerprint, content in render_on_ray(render, recorded, ray_address))
        else:
            done = pool.imap_unordered(worker, tasks) if parallel else map(worker, tasks)
        for record in done:
            results.append(record)
            bar.update(sizes[record["name"]])
    return results
