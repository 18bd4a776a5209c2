"""`cmgl sweep` on local Ray: tiny jobs, some made to fail by a real bad input (an export dir
that does not exist); failures are retried, then reported, the rest finish, a rerun skips done jobs."""
import json

import pytest
import torch

from cmgl_dist.config import load_config
from cmgl_dist.engine.export import export_model
from cmgl_dist.evaluate.sweep import main as sweep_main
from cmgl_dist.model import build_model

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    # one Ray session for the module (start-up is ~10 s); the sweep reuses it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, small_shards):
    cfg = load_config("debug", [f"data.shards={small_shards}", "eval.bootstrap=100"])
    torch.manual_seed(0)
    return export_model(build_model(cfg.model).state_dict(), cfg, tmp_path_factory.mktemp("run") / "export")


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_sweep_retries_reports_failures_and_resumes(ray_session, tiny_export, tmp_path):
    missing = tmp_path / "no_such_run" / "export"
    argv = ["--exports", str(tiny_export), str(missing), "--out", str(tmp_path / "sweep"), "--tasks", "retrieval", "probe",
            "--fractions", "0.5", "1.0", "--seeds", "0", "--retries", "1"]
    assert sweep_main(argv) == 1

    records = _records(tmp_path / "sweep")
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] == "failed"]
    assert sorted(r["setting"] for r in ok) == ["probe 100%", "probe 50%", "retrieval"]
    assert {r["export"] for r in ok} == {str(tiny_export)}
    assert len(failed) == 3 and {r["export"] for r in failed} == {str(missing)}
    assert all(r["attempts"] == 2 and r["error"].startswith("FileNotFoundError") for r in failed)
    table = (tmp_path / "sweep" / "table.md").read_text()
    failed_section = table.split("## Failed jobs")[1]
    assert sorted(line.split("`")[1] for line in failed_section.splitlines() if line.startswith("- `")) == \
        sorted(r["job_id"] for r in failed)
    assert "| probe 50% |" in table

    # the rerun runs only the failed jobs again; the finished ones are not repeated
    assert sweep_main(argv) == 1
    again = _records(tmp_path / "sweep")
    assert again[:len(records)] == records
    assert sorted(r["job_id"] for r in again[len(records):]) == sorted(r["job_id"] for r in failed)

    # without the bad export everything is done: nothing runs and the sweep succeeds
    assert sweep_main([a for a in argv if a != str(missing)]) == 0
    assert len(_records(tmp_path / "sweep")) == len(again)


def test_the_sweep_starts_the_longest_tasks_first():
    from cmgl_dist.evaluate.jobs import LONGEST_FIRST, TASKS, longest_first, plan_jobs

    assert sorted(LONGEST_FIRST) == sorted(TASKS)  # every task has a place
    jobs = plan_jobs(["a", "b"], ["zero_shot", "probe", "retrieval", "attention"], [0.1, 1.0], [0])
    ordered = longest_first(jobs)
    assert sorted(ordered, key=lambda j: j.job_id) == sorted(jobs, key=lambda j: j.job_id)
    assert [j.task for j in ordered[:2]] == ["retrieval", "retrieval"]
    assert [j.task for j in ordered[-2:]] == ["attention", "attention"]
