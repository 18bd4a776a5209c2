"""The one-call GPU check parses, names only stages it defines, and its e2e summary reads a
run's metrics.jsonl (torn last line included) into one row. The full DRY=1 run takes minutes on
two cores, so it is run by hand (docs/GPU_CHECK.md), not here."""
import importlib.util
import json
import re
import subprocess
from pathlib import Path

from cmgl_dist.bench.harness import pivot, read_rows

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
_spec = importlib.util.spec_from_file_location("e2e_summary", ROOT / "benchmarks" / "e2e_summary.py")
e2e_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e_summary)


def test_script_parses_and_every_default_stage_is_defined():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    stages = re.search(r'STAGES=\$\{STAGES:-"([^"]+)"\}', text).group(1).split()
    assert stages and all(f"stage_{name}() {{" in text for name in stages)


def test_e2e_summary_skips_the_first_window_and_a_torn_line(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    windows = [dict(step=5 * k, samples_per_s=s, step_time_s=128 / s, gpu_util_pct=90.0, peak_mem_mb=100.0 + k,
                    loss_local=1.0 / k) for k, s in enumerate([50.0, 800.0, 900.0, 1000.0], start=1)]
    metrics.write_text("\n".join(json.dumps(w) for w in windows) + '\n{"step": 25, "samp')
    csv_path = tmp_path / "e2e.csv"
    e2e_summary.main(["--name", "triton", "--metrics", str(metrics), "--rc", "124", "--csv", str(csv_path)])
    [got] = pivot(read_rows(csv_path), "e2e_throughput")
    assert got["run"] == "triton" and got["rc"] == "124" and got["windows"] == 4 and got["last_step"] == 20
    assert float(got["samples_per_s_p50"]) == 900.0 and float(got["samples_per_s_max"]) == 1000.0
    assert float(got["peak_mem_mb"]) == 104.0
