"""`cmgl sweep`: evaluation jobs (checkpoints x tasks x fractions x seeds) as Ray tasks.

    cmgl sweep --exports runs/a/export runs/b/export --out sweeps/ab            # local Ray
    cmgl sweep --exports runs/a/export --out sweeps/a --address auto           # a running cluster

Each job is one Ray task asking for a CPU (and a whole GPU where the cluster has GPUs). A job
that raises is retried `--retries` times, then written to results.jsonl as a failure; the
others finish. Records are appended as each job ends, so a rerun skips what is done and a
killed sweep loses nothing that finished. On a cluster every node needs this package installed
and the export dirs, shards and --out on a shared file system.
"""
from __future__ import annotations

import argparse
import logging
import os

from cmgl_dist.evaluate.jobs import longest_first, run_job
from cmgl_dist.evaluate.results import append_record
from cmgl_dist.evaluate.run import Plan, add_common_args, failure_record, finish, out_lock, prepare_or_exit
from cmgl_dist.shards.bounds import bounded
from cmgl_dist.logs import init_logger

log = logging.getLogger("cmgl.sweep")


def _root_cause(error: BaseException) -> BaseException:
    """The job's own exception inside Ray's RayTaskError wrapper."""
    return getattr(error, "cause", None) or error


def run_on_ray(plan: Plan, *, retries: int) -> int:
    """Submit every job, record each as it ends; returns the number of failed jobs."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    remote_job = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_retries=retries,
                            retry_exceptions=True)(run_job)
    pending = {remote_job.remote(job, plan.inputs): job for job in longest_first(plan.todo)}
    log.info("submitted %d jobs (%s)", len(pending), f"{gpus} GPUs, one per job" if gpus else "CPU only")
    failures = 0
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready)
        try:
            record = ray.get(ready)
        except Exception as error:  # noqa: BLE001 - RayTaskError wraps whatever the job raised
            cause = _root_cause(error)
            log.error("job %s failed after %d attempt(s): %s", job.job_id, retries + 1, cause)
            record = failure_record(job, plan.keys[job.job_id], cause, attempts=retries + 1)
            failures += 1
        append_record(plan.results, record)
        log.info("%s: %s (%d left)", job.job_id, record["status"], len(pending))
    return failures


def main(argv=None) -> int:
    init_logger()
    parser = argparse.ArgumentParser(prog="cmgl sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--address", help="Ray cluster address ('auto', 'ray://host:10001'); default: start local Ray")
    parser.add_argument("--num-cpus", type=bounded("num_cpus"), default=os.cpu_count(),
                        help="CPUs of a local Ray session (at least 1: every job needs one)")
    parser.add_argument("--retries", type=bounded("retries"), default=1,
                        help="retries of a failing job before it is reported (0-10)")
    args = parser.parse_args(argv)
    with out_lock(parser.prog, args.out):
        return _sweep(parser.prog, args)


def _sweep(prog: str, args) -> int:
    plan = prepare_or_exit(prog, args)
    failures = 0
    if plan.todo:
        import ray

        # One Ray session per sweep; a caller that already holds one (tests, notebooks) keeps it.
        started = not ray.is_initialized()
        if started:
            ray.init(address=args.address or None, num_cpus=None if args.address else args.num_cpus,
                     include_dashboard=False, log_to_driver=True)
        try:
            failures = run_on_ray(plan, retries=args.retries)
        finally:
            if started:
                ray.shutdown()
    return finish(plan, failures)
