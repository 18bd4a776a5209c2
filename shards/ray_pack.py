"""`cmgl pack --ray [ADDRESS]`: render shards as Ray tasks across a cluster; this process writes them.

The driver (the `cmgl pack` process) is the pack folder's only writer: it holds the folder's
claim for the whole run (taken in `pack.pack` / `corpus_pack.pack_corpus`, before this runs),
skips shards already finished (their `.progress` record matches the task's fingerprint), sends
the rest to Ray, and commits each rendered shard as it comes back (`sample.commit_shard`: tar,
record, rename), then writes the manifest once at the end. Rendering runs the same code as a
one-process pack, so the shards are byte-identical to one; a killed run resumes from the shards
it committed. Workers need the input images at the same paths (shared storage) and the same
cmgl and Pillow versions; they write nothing, so the output folder need only exist here.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator

from cmgl_dist.shards.sample import commit_shard, finished_record

log = logging.getLogger("cmgl.pack")

# Rendered shards waiting in Ray's object store, per cluster CPU: enough to keep every worker busy
# while the driver writes, few enough that a slow disk here does not fill the store.
IN_FLIGHT_PER_CPU = 2


def pack_on_ray(render: Callable, tasks: list, address: str) -> Iterator[dict]:
    """Each task's progress record, in completion order (finished ones first, without Ray work).

    `address`: a Ray cluster address, or "" for the one RAY_ADDRESS names (else a local instance).
    An already initialised Ray session (a notebook, a test) is used as it is and left running.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
    try:
        yield from _run(ray, render, tasks)
    finally:
        if started:
            ray.shutdown()


def _run(ray, render: Callable, tasks: list) -> Iterator[dict]:
    remote = ray.remote(num_cpus=1)(render)
    limit = max(1, IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
    waiting, pending = [], {}
    for task in tasks:
        fingerprint = task.fingerprint()
        record = finished_record(Path(task.out_dir), task.name, fingerprint)
        if record is not None:
            yield record
        else:
            waiting.append((task, fingerprint))
    log.info("%d shard(s) to render on Ray (%d already finished)", len(waiting), len(tasks) - len(waiting))
    waiting.reverse()  # pop() from the end keeps the plan's order
    while waiting or pending:
        while waiting and len(pending) < limit:
            task, fingerprint = waiting.pop()
            pending[remote.remote(task)] = (task, fingerprint)
        [done], _ = ray.wait(list(pending), num_returns=1)
        task, fingerprint = pending.pop(done)
        yield commit_shard(Path(task.out_dir), task.name, task.split, fingerprint, *ray.get(done))
