"""`cmgl pack --ray [ADDRESS]`: render shards as Ray tasks across a cluster; this process writes them.

The driver (the `cmgl pack` process) is the pack folder's only writer: it holds the folder's
claim for the whole run (taken in `pack.pack` / `corpus_pack.pack_corpus`, before this runs),
sends every shard task to Ray with the fingerprint its `.progress` record holds (if any), and
commits each rendered shard as it comes back (`shard_jobs.commit_rendered`: tar, record, rename),
then the manifest is written once at the end. A task first computes its own fingerprint (which
reads its input images: on the cluster, in parallel) and renders only when that differs from the
recorded one; a shard whose record matches is kept once the driver has checked its sha256 (and
rendered in the driver when it fails that check). Rendering runs the same code as a one-process
pack, so the shards are byte-identical to one; a killed run resumes from the shards it committed.
Workers need the input images at the same paths (shared storage) and the same cmgl and Pillow
versions; they write nothing, so the output folder need only exist here.
"""
from __future__ import annotations

from typing import Callable, Iterator

# Rendered shards waiting in Ray's object store, per cluster CPU: enough to keep every worker busy
# while the driver writes, few enough that a slow disk here does not fill the store.
IN_FLIGHT_PER_CPU = 2


def render_on_ray(render: Callable, tasks: list[tuple], address: str) -> Iterator[tuple]:
    """(task, fingerprint, rendered content or None when the fingerprint is the recorded one) for
    each (task, recorded fingerprint or None) of `tasks`, in completion order.

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


def fingerprint_and_render(render: Callable, task, recorded: str | None):
    """(the task's fingerprint, its rendered content, or None when the fingerprint is `recorded`)."""
    fingerprint = task.fingerprint()
    return fingerprint, None if fingerprint == recorded else render(task)


def _run(ray, render: Callable, tasks: list[tuple]) -> Iterator[tuple]:
    remote = ray.remote(num_cpus=1)(fingerprint_and_render)
    limit = max(1, IN_FLIGHT_PER_CPU * int(ray.cluster_resources().get("CPU", 1)))
    waiting = list(reversed(tasks))  # pop() from the end keeps the plan's order
    pending = {}
    while waiting or pending:
        while waiting and len(pending) < limit:
            task, recorded = waiting.pop()
            pending[remote.remote(render, task, recorded)] = task
        [done], _ = ray.wait(list(pending), num_returns=1)
        task = pending.pop(done)
        yield (task, *ray.get(done))
