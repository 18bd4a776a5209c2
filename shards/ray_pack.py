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

import math
import os
import socket
from typing import Callable, Iterator

# Rendered shards waiting in Ray's object store, per cluster CPU: enough to keep every worker busy
# while the driver writes, few enough that a slow disk here does not fill the store.
IN_FLIGHT_PER_CPU = 2
CONNECT_TIMEOUT = 10.0  # seconds to reach the cluster's address (CMGL_RAY_CONNECT_TIMEOUT)
_AUTH_HINT = ("if the cluster requires a token (RAY_AUTH_MODE=token, current Ray), export the cluster's "
              "RAY_AUTH_TOKEN here too")


class RayUnavailable(RuntimeError):
    """The Ray address is malformed, unreachable or refused the connection; one line saying which."""


def check_address(address: str) -> None:
    """A Ray address (`host:port`, `ray://host:port`, `auto`, or "" for RAY_ADDRESS or a local
    instance) that is well formed and answers a TCP connection within CONNECT_TIMEOUT: Ray's own
    connect retries for minutes on an unreachable one, then raises."""
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address in ("", "auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise RayUnavailable(f"--ray {address!r} is not a Ray address (host:port, ray://host:port or auto)")
    raw = os.environ.get("CMGL_RAY_CONNECT_TIMEOUT", str(CONNECT_TIMEOUT))
    try:
        timeout = float(raw)
    except ValueError:
        timeout = math.nan
    if not (math.isfinite(timeout) and timeout > 0):
        raise RayUnavailable(f"CMGL_RAY_CONNECT_TIMEOUT={raw!r}: give a number of seconds > 0")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayUnavailable(f"--ray {address}: cannot reach it within {timeout:g} s "
                             f"({e.strerror or type(e).__name__}); start the cluster (`ray start --head`) or "
                             "fix the address") from None


def render_on_ray(render: Callable, tasks: list[tuple], address: str) -> Iterator[tuple]:
    """(task, fingerprint, rendered content or None when the fingerprint is the recorded one) for
    each (task, recorded fingerprint or None) of `tasks`, in completion order.

    `address`: a Ray cluster address, or "" for the one RAY_ADDRESS names (else a local instance).
    An already initialised Ray session (a notebook, a test) is used as it is and left running.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        check_address(address)
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ... on a failed connect
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise RayUnavailable(f"--ray {address or 'local'}: Ray did not connect ({type(e).__name__}: {first}); "
                                 f"{_AUTH_HINT}") from None
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
