"""`auto`'s backend table is one for all ranks: rank 0 times the candidates for every word bucket and
broadcasts the table, even where another rank, timing alone, would have chosen differently; rank 0
records the choices and the times in the run folder, and a resumed process reuses the record
without timing again. Within one process, `choose_backend` decides alone (no collective)."""
import json
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from cmgl_dist.losses import backend_choice, local_similarity_reference
from cmgl_dist.losses.backend_choice import RECORD_FILE, agree_backends, choose_backend, use_record

WORLD_SIZE = 2


def _inputs():
    g = torch.Generator().manual_seed(0)
    words = torch.randn(3, 5, 8, generator=g)
    return words, torch.ones(3, 5, dtype=torch.bool), torch.randn(2, 7, 8, generator=g)


def _candidates(rank, calls):
    """Two correct backends whose speed depends on the rank: alone, rank 0 would pick 'other'
    and rank 1 'reference'."""
    def slow_on(slow_rank, name):
        def run(*args):
            calls.append(name)
            if rank == slow_rank:
                time.sleep(0.05)
            return local_similarity_reference(*args)
        return run
    return {"other": slow_on(1, "other"), "reference": slow_on(0, "reference")}


def _rank_main(rank, port, run_dir, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        use_record(run_dir / RECORD_FILE)
        calls = []

        def agree():
            return agree_backends(_candidates(rank, calls), "reference", *_inputs(), (4.0, 5.0), texts=3,
                                  buckets=(16,), with_grad=False)[16]

        first = agree()
        again = agree()
        timed_calls = list(calls)
        use_record(run_dir / RECORD_FILE)  # a resumed run: a new process state, the same run folder
        calls.clear()
        resumed = agree()
        torch.save({"first": first, "again": again, "resumed": resumed, "timed_calls": timed_calls,
                    "resumed_calls": list(calls)}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()



def test_rank_zero_chooses_for_every_rank_and_the_choice_is_recorded(tmp_path):
    mp.spawn(_rank_main, args=(free_port(), tmp_path, tmp_path), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    for result in results:
        assert result["first"] == result["again"] == result["resumed"] == "other"
        assert result["resumed_calls"] == [], "the resumed run timed again instead of reading the record"
    assert sorted(results[0]["timed_calls"]) == ["other", "other", "reference", "reference"]  # warm-up + timed
    assert results[1]["timed_calls"] == [], "only rank 0 times"
    record = json.loads((tmp_path / RECORD_FILE).read_text())
    (key, entry), = record["choices"].items()
    assert key == "cpu float32 T=3 I=2 W=16 R=7 D=8 fwd"
    assert entry["choice"] == "other" and set(entry["times_ms"]) == {"other", "reference"}
    assert entry["times_ms"]["reference"] > entry["times_ms"]["other"]
    assert entry["environment"] == backend_choice.environment("cpu")


def test_a_record_from_another_environment_is_timed_again(tmp_path):
    use_record(tmp_path / RECORD_FILE)
    try:
        calls = []
        assert choose_backend(_candidates(0, calls), "reference", *_inputs(), (4.0, 5.0)) == "other"
        record = json.loads((tmp_path / RECORD_FILE).read_text())
        for entry in record["choices"].values():
            entry["environment"]["torch"] = "0.0"
            entry["choice"] = "reference"
        (tmp_path / RECORD_FILE).write_text(json.dumps(record))
        use_record(tmp_path / RECORD_FILE)
        calls.clear()
        assert choose_backend(_candidates(0, calls), "reference", *_inputs(), (4.0, 5.0)) == "other"
        assert len(calls) == 4
    finally:
        use_record(None)
