"""`cmgl evaluate`: run the evaluation jobs of one or more exports in this process, then report.

    cmgl evaluate --exports runs/cmgl/export --out runs/cmgl/eval

`cmgl sweep` takes the same arguments and runs the jobs as Ray tasks. Both append each finished
job to OUT/results.jsonl, skip jobs already recorded there as done *for the same inputs* (export
and shards content, split, settings: see context.py), and write OUT/table.md and the ROC PNGs
at the end from the records of this run's inputs only. The exit status is 1 when any job
failed, 2 for a bad config or argument, 0 otherwise.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cmgl_dist.config import CMGLConfig, ConfigError, load_config
from cmgl_dist.data.shardlist import shard_urls
from cmgl_dist.data.shardlist import is_passthrough
from cmgl_dist.evaluate.context import EvalInputs
from cmgl_dist.evaluate.jobs import FRACTION_TASKS, OPT_IN_TASKS, TASKS, Job, job_record, plan_jobs, run_job
from cmgl_dist.evaluate.report import write_report
from cmgl_dist.evaluate.results import append_record, completed_ids, for_inputs, latest_per_job, read_records, repair
from cmgl_dist.locks import FolderBusy, folder_lock
from cmgl_dist.logs import init_logger
from cmgl_dist.redact import redact

log = logging.getLogger("cmgl.evaluate")

RESULTS = "results.jsonl"


def train_fraction(text: str) -> float:
    """A probe train fraction: a finite number in (0, 1]; anything else is an argument error (exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0 < value <= 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1]")
    return value


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exports", nargs="+", required=True, help="export dirs written by `cmgl train` (RUN_DIR/export)")
    parser.add_argument("--out", required=True, help="folder for results.jsonl, table.md, PNGs and the feature cache")
    parser.add_argument("--shards", help="packed shards folder (default: data.shards of the config)")
    parser.add_argument("--config", help="config for the eval.* defaults (default: the first export's config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--tasks", nargs="+", choices=TASKS,
                        help="default: all but probe_cv and finetune (finetune runs when eval.finetune is true)")
    parser.add_argument("--fractions", nargs="+", type=train_fraction, help="probe train fractions (default: eval.probe_fractions)")
    parser.add_argument("--seeds", nargs="+", type=int, help="probe seeds (default: eval.seeds)")
    parser.add_argument("--split", choices=("val", "test", "all"),
                        help="split scored (default: eval.split, test); 'all': every sample of the pack "
                             "(an external corpus, with probe_cv)")
    parser.add_argument("--folds", type=int, help="probe_cv: folds of the patient-grouped cross-validation "
                                                  "(default: eval.folds, 5)")
    parser.add_argument("--n-prompts", type=int, help="zero-shot prompts per class (default: eval.n_prompts, 20)")


def config_for(args) -> CMGLConfig:
    """The config whose eval.* are the settings; --split, --folds and --n-prompts override their fields."""
    flags = {"split": args.split, "folds": args.folds, "n_prompts": args.n_prompts}
    overrides = list(args.set) + [f"eval.{field}={value}" for field, value in flags.items() if value is not None]
    if args.config:
        return load_config(args.config, overrides)
    exported = Path(args.exports[0]) / "config.yaml"
    return load_config(str(exported) if exported.is_file() else None, overrides)


@dataclass
class Plan:
    """One evaluate/sweep invocation: its inputs, every planned job with the key its record must
    carry to count as done, the jobs still to run, and the results file."""
    inputs: EvalInputs
    keys: dict[str, Optional[str]]
    todo: list[Job]
    results: Path

    def current_records(self) -> list[dict]:
        """The latest record of each planned job among those made for this plan's inputs."""
        return latest_per_job(for_inputs(read_records(self.results), self.keys))


def prepare(args) -> Plan:
    """The plan: settings, the jobs still to run (those done for the same inputs skipped)."""
    cfg = config_for(args)
    shards = args.shards or cfg.data.shards
    if not shards:
        raise ConfigError("no shards: pass --shards or set data.shards in the config")
    check_shards(shards, cfg.eval.split)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not is_passthrough(shards):  # a URL or pipe: command stays as given
        shards = str(Path(shards).resolve())
    inputs = EvalInputs(shards=shards, out_dir=str(out.resolve()), settings=cfg.eval)
    tasks = args.tasks or [t for t in TASKS if t not in OPT_IN_TASKS or (t == "finetune" and cfg.eval.finetune)]
    check_split_tasks(cfg.eval.split, tasks)
    jobs = plan_jobs([str(Path(e).resolve()) for e in args.exports], tasks,
                     args.fractions or list(cfg.eval.probe_fractions), args.seeds or list(cfg.eval.seeds))
    export_keys = {export: inputs.expected_key(export) for export in {j.export for j in jobs}}
    keys = {j.job_id: export_keys[j.export] for j in jobs}
    results = out / RESULTS
    repair(results)
    done = completed_ids(for_inputs(read_records(results), keys))
    todo = [j for j in jobs if j.job_id not in done]
    log.info("%d jobs planned, %d already done for these inputs, %d to run", len(jobs), len(jobs) - len(todo), len(todo))
    return Plan(inputs, keys, todo, results)


def check_shards(shards: str, split: str) -> None:
    """The shards to score exist and list `split` (a broken pack is an argument error, not N failed jobs)."""
    try:
        shard_urls(shards, split)
    except (ValueError, OSError) as err:
        raise ConfigError(f"--shards {redact(shards)}: {err}") from None


def check_split_tasks(split: str, tasks: list[str]) -> None:
    """`all` scores every sample of the pack, the train split included: a probe or fine-tune trained
    on train would be scored on its own training samples (an inflated AUC)."""
    trained = [t for t in tasks if t in FRACTION_TASKS]
    if split == "all" and trained:
        raise ConfigError(f"--split all scores the samples that {', '.join(trained)} train on; evaluate a pack's "
                          "held-out split with --split test, or score an external corpus with --split all "
                          f"--tasks {' '.join(t for t in tasks if t not in FRACTION_TASKS) or 'zero_shot'} probe_cv "
                          "(patient-grouped cross-validation)")


@contextmanager
def out_lock(prog: str, out: str):
    """Hold --out's writer lock (cmgl_dist.locks) for the whole command; another writer there: exit 2."""
    try:
        with folder_lock(out, prog):
            yield
    except FolderBusy as err:  # only the lock raises it
        print(f"{prog}: --out {err}", file=sys.stderr)
        raise SystemExit(2) from None


def failure_record(job: Job, key: Optional[str], error: BaseException, attempts: int) -> dict:
    return {**job_record(job, key), "status": "failed", "attempts": attempts,
            "error": redact(f"{type(error).__name__}: {error}".splitlines()[0][:500])}


def finish(plan: Plan, failures: int) -> int:
    table = write_report(plan.inputs.out_dir, plan.current_records())
    print(table.read_text())  # the command's result, on stdout for piping; diagnostics go to the log
    if failures:
        log.error("%d job(s) failed; see the end of %s", failures, table)
    return 1 if failures else 0


def prepare_or_exit(prog: str, args) -> Plan:
    """`prepare`, except that a bad config or argument exits 2 with its message (no traceback)."""
    try:
        return prepare(args)
    except ConfigError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv=None) -> int:
    init_logger()
    parser = argparse.ArgumentParser(prog="cmgl evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = parser.parse_args(argv)
    with out_lock(parser.prog, args.out):
        plan = prepare_or_exit(parser.prog, args)
        failures = 0
        for job in plan.todo:
            try:
                record = run_job(job, plan.inputs)
            except Exception as error:  # noqa: BLE001 - one job's failure is recorded; the others run
                log.error("job %s failed:\n%s", job.job_id, traceback.format_exc())
                record, failures = failure_record(job, plan.keys[job.job_id], error, attempts=1), failures + 1
            append_record(plan.results, record)
            log.info("%s: %s", job.job_id, record["status"])
        return finish(plan, failures)
