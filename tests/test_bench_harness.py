"""The benchmark harness: percentiles, measure(), the long-format CSV (append, refuse, pivot) and the
conversion of the earlier wide CSVs."""
import csv
import importlib.util
from pathlib import Path

import pytest

from cmgl_dist.bench.harness import COLUMNS, append_results, append_rows, measure, percentiles, pivot, read_rows

_spec = importlib.util.spec_from_file_location(
    "convert_results", Path(__file__).parent.parent / "benchmarks" / "convert_results.py")
convert_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_results)


def test_percentiles_interpolate_like_numpy():
    assert percentiles([4.0, 1.0, 3.0, 2.0, 5.0]) == pytest.approx([1.8, 3.0, 4.2])
    assert percentiles([7.0], (0.5,)) == [7.0]


def test_measure_times_each_call_after_the_warmup_and_runs_setup_untimed():
    calls = []
    timing = measure(lambda x: calls.append(x), setup=lambda: len(calls), warmup=2, reps=5)
    assert calls == list(range(7))
    assert 0 <= timing.p20_ms <= timing.p50_ms <= timing.p80_ms


def test_cases_round_trip_through_the_long_format(tmp_path):
    path = tmp_path / "r.csv"
    append_results(path, "demo", {"T": 4, "dtype": "fp32"}, {"p50_ms": 1.5, "peak_extra_mb": 2})
    append_results(path, "demo", {"T": 8, "dtype": "fp32"}, {"p50_ms": 3.0})
    rows = read_rows(path)
    assert tuple(rows[0]) == COLUMNS and len(rows) == 3 and rows[0]["config"] == "T=4;dtype=fp32"
    cases = pivot(rows, "demo")
    assert [(c["T"], c["p50_ms"]) for c in cases] == [("4", 1.5), ("8", 3.0)] and cases[0]["peak_extra_mb"] == 2.0


def test_a_file_with_another_header_is_refused_not_appended_to(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("machine,date,commit,T,p50_ms\nx,d,c,4,1.0\n")
    with pytest.raises(ValueError, match="convert_results"):
        append_results(path, "demo", {"T": 4}, {"p50_ms": 1.0})
    with pytest.raises(ValueError, match="exactly the columns"):
        append_rows(tmp_path / "new.csv", [{"benchmark": "demo", "config": "", "metric": "m", "value": 1, "extra": 2}])
    with pytest.raises(ValueError, match="may not contain"):
        append_results(tmp_path / "new.csv", "demo", {"set": "a=b"}, {"m": 1})
    assert path.read_text().count("\n") == 2


def test_a_wide_csv_converts_once_keeping_every_measured_value(tmp_path):
    path = tmp_path / "png_compress_level.csv"
    path.write_text("machine,date,commit,image_size,png_level,images,ms_per_image,kbytes_per_image\n"
                    "M,2026-11-27T22:31:31Z,abc,256,1,200,8.03,45.7\n")
    assert convert_results.convert(path) and not convert_results.convert(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["config"], r["metric"], r["value"]) for r in rows] == [
        ("image_size=256;png_level=1;images=200", "ms_per_image", "8.03"),
        ("image_size=256;png_level=1;images=200", "kbytes_per_image", "45.7")]
    assert rows[0]["machine"] == "M" and rows[0]["commit"] == "abc" and rows[0]["benchmark"] == "png_compress_level"
