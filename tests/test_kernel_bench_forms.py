"""The benchmark's competitor forms (GLoRIA's loop, the vectorised and the Gram forms that
torch.compile is timed on) compute the same S and gradients as local_similarity_reference,
so the benchmark compares like with like. Eager, tiny shapes, CPU or CUDA."""
import importlib.util
from pathlib import Path

import pytest
import torch

from cmgl_dist.bench.harness import pivot, read_rows
from cmgl_dist.losses import local_similarity_reference

_spec = importlib.util.spec_from_file_location(
    "bench_local_similarity", Path(__file__).parent.parent / "benchmarks" / "bench_local_similarity.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("form", ["loop_similarity", "vectorised_similarity", "gram_similarity"])
def test_form_matches_reference(form):
    words, word_mask, regions, _ = bench.make_inputs(3, 5, 11, 13, 24, torch.float64, DEVICE, seed=5)
    grad = torch.randn(3, 5, dtype=torch.float64, device=DEVICE)
    S = getattr(bench, form)(words, word_mask, regions, 4.0, 5.0)
    grads = torch.autograd.grad(S, (words, regions), grad)
    S_ref = local_similarity_reference(words, word_mask, regions, 4.0, 5.0)
    grads_ref = torch.autograd.grad(S_ref, (words, regions), grad)
    torch.testing.assert_close(S, S_ref)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want)


def test_quick_benchmark_appends_rows(tmp_path):
    csv_path = tmp_path / "bench.csv"
    bench.main(["--quick", "--providers", "reference", "--dtypes", "fp32", "--modes", "fwdbwd",
                "--batches", "4", "--local-global", "0", "0", "--reps", "2", "--csv", str(csv_path)])
    cases = pivot(read_rows(csv_path), "local_similarity")
    assert len(cases) == 1 and cases[0]["provider"] == "reference" and cases[0]["mode"] == "fwdbwd"
    assert 0 < cases[0]["p20_ms"] <= cases[0]["p50_ms"] <= cases[0]["p80_ms"]
