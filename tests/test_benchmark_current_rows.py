"""Benchmark CSVs say what is current: a re-measured case replaces its earlier rows on the same
machine (Liger-Kernel's update_benchmark_data_csv), an 'ok' re-run replaces an 'oom', other
machines' and other cases' rows stay, and plots read the current rows only."""
import importlib.util
from pathlib import Path

from cmgl_dist.bench.harness import COLUMNS, current_rows, read_rows, record_results, update_rows

ROOT = Path(__file__).resolve().parents[1]


def _stamp(machine, date):
    return {"machine": machine, "date": date, "commit": "abc"}


def _case(csv_path, machine, date, T, p50, status="ok"):
    record_results(csv_path, "local_similarity", {"T": T, "I": T, "dtype": "bf16", "provider": "triton",
                                                  "mode": "fwd", "status": status},
                   {"p20_ms": p50, "p50_ms": p50, "p80_ms": p50, "peak_extra_mb": 1.0}, stamp_with=_stamp(machine, date))


def test_a_new_measurement_replaces_the_same_case_only(tmp_path):
    path = tmp_path / "local_similarity.csv"
    _case(path, "H200", "2026-11-01T00:00:00Z", 128, float("nan"), status="oom")
    _case(path, "H200", "2026-11-01T00:00:00Z", 512, 9.0)
    _case(path, "A100", "2026-11-01T00:00:00Z", 128, 7.0)
    _case(path, "H200", "2026-12-01T00:00:00Z", 128, 3.0)
    rows = read_rows(path)
    assert len(rows) == 3 * 4
    h200_128 = [r for r in rows if r["machine"] == "H200" and r["config"].startswith("T=128")]
    assert {r["date"] for r in h200_128} == {"2026-12-01T00:00:00Z"} and "status=ok" in h200_128[0]["config"]
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)


def test_current_rows_keep_the_latest_of_each_case():
    old = dict(zip(COLUMNS, ("H200", "2026-11-01T00:00:00Z", "a", "b", "T=1;status=ok", "p50_ms", "5")))
    new = {**old, "date": "2026-12-01T00:00:00Z", "value": "3"}
    other = {**old, "config": "T=2;status=ok"}
    assert current_rows([old, other, new]) == [other, new]


def test_update_keeps_the_file_line_endings(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes((",".join(COLUMNS) + "\n" + "M,2026-01-01T00:00:00Z,c,b,T=1,m,1\n").encode())
    update_rows(path, [{"benchmark": "b", "config": "T=2", "metric": "m", "value": 2}],
                stamp_with=_stamp("M", "2026-02-01T00:00:00Z"))
    assert b"\r" not in path.read_bytes() and len(read_rows(path)) == 2


def test_the_plot_reads_current_rows_only(tmp_path):
    spec = importlib.util.spec_from_file_location("plot_ls", ROOT / "benchmarks" / "plot_local_similarity.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    path = tmp_path / "local_similarity.csv"
    _case(path, "H200", "2026-11-01T00:00:00Z", 128, 30.0)
    rows = read_rows(path)
    # an older row of the same case appended later in the file (a merge): superseded by date
    with open(path, "a") as f:
        for row in rows:
            f.write(",".join([row["machine"], "2026-10-01T00:00:00Z", "old", row["benchmark"], row["config"],
                              row["metric"], "99"]) + "\r\n")
    [[provider, by_batch]] = plot.load_cases(path)[("H200", "bf16", "fwd")].items()
    assert by_batch[128]["p50_ms"] == 30.0
