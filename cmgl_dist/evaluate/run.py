"""`cmgl evaluate`: run the evaluation jobs of one or more exports in this process, then report.

    cmgl evaluate --exports runs/cmgl/export --out runs/cmgl/eval

`cmgl sweep` takes the same arguments and runs the jobs as Ray tasks. Both append each finished
job to OUT/results.jsonl, skip jobs already recorded there as done, and write OUT/table.md and
the ROC PNGs at the end. The exit status is 1 when any job failed, 0 otherwise.
"""
from __future__ import annotations

import argparse
import logging
import traceback
from pathlib import Path

from cmgl_dist.config import CMGLConfig, load_config
from cmgl_dist.evaluate.jobs import OPT_IN_TASKS, TASKS, EvalSettings, Job, job_record, plan_jobs, run_job
from cmgl_dist.evaluate.report import write_report
from cmgl_dist.evaluate.results import append_record, completed_ids, read_records, repair

log = logging.getLogger("cmgl.evaluate")

RESULTS = "results.jsonl"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exports", nargs="+", required=True, help="export dirs written by `cmgl train` (RUN_DIR/export)")
    parser.add_argument("--out", required=True, help="folder for results.jsonl, table.md, PNGs and the feature cache")
    parser.add_argument("--shards", help="packed shards folder (default: data.shards of the config)")
    parser.add_argument("--config", help="config for the eval.* defaults (default: the first export's config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--tasks", nargs="+", choices=TASKS,
                        help="default: all but probe_cv and finetune (finetune runs when eval.finetune is true)")
    parser.add_argument("--fractions", nargs="+", type=float, help="probe train fractions (default: eval.probe_fractions)")
    parser.add_argument("--seeds", nargs="+", type=int, help="probe seeds (default: eval.seeds)")
    parser.add_argument("--split", default="test", choices=("val", "test", "all"),
                        help="split scored; 'all': every sample of the pack (an external corpus, with probe_cv)")
    parser.add_argument("--folds", type=int, default=5, help="probe_cv: folds of the patient-grouped cross-validation")
    parser.add_argument("--n-prompts", type=int, default=20, help="zero-shot prompts per class")


def config_for(args) -> CMGLConfig:
    if args.config:
        return load_config(args.config, args.set)
    exported = Path(args.exports[0]) / "config.yaml"
    return load_config(str(exported) if exported.is_file() else None, args.set)


def prepare(args) -> tuple[EvalSettings, list[Job], Path]:
    """Settings, the jobs still to run (done ones skipped), and the results file."""
    cfg = config_for(args)
    shards = args.shards or cfg.data.shards
    if not shards:
        raise SystemExit("no shards: pass --shards or set data.shards in the config")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = EvalSettings(shards=str(Path(shards).resolve()), out_dir=str(out.resolve()), split=args.split,
                            batch_size=cfg.eval.batch_size, bootstrap=cfg.eval.bootstrap, n_prompts=args.n_prompts,
                            folds=args.folds)
    tasks = args.tasks or [t for t in TASKS if t not in OPT_IN_TASKS or (t == "finetune" and cfg.eval.finetune)]
    jobs = plan_jobs([str(Path(e).resolve()) for e in args.exports], tasks,
                     args.fractions or list(cfg.eval.probe_fractions), args.seeds or list(cfg.eval.seeds))
    results = out / RESULTS
    repair(results)
    done = completed_ids(read_records(results))
    todo = [j for j in jobs if j.job_id not in done]
    log.info("%d jobs planned, %d already done, %d to run", len(jobs), len(jobs) - len(todo), len(todo))
    return settings, todo, results


def failure_record(job: Job, error: BaseException, attempts: int) -> dict:
    return {**job_record(job), "status": "failed", "attempts": attempts,
            "error": f"{type(error).__name__}: {error}".splitlines()[0][:500]}


def finish(settings: EvalSettings, failures: int) -> int:
    table = write_report(settings.out_dir)
    print(table.read_text())
    if failures:
        print(f"{failures} job(s) failed; see the end of {table}")
    return 1 if failures else 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="cmgl evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = parser.parse_args(argv)
    settings, jobs, results = prepare(args)
    failures = 0
    for job in jobs:
        try:
            record = run_job(job, settings)
        except Exception as error:  # noqa: BLE001 - one job's failure is recorded; the others run
            log.error("job %s failed:\n%s", job.job_id, traceback.format_exc())
            record, failures = failure_record(job, error, attempts=1), failures + 1
        append_record(results, record)
        log.info("%s: %s", job.job_id, record["status"])
    return finish(settings, failures)
