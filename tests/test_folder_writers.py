"""One writer per folder: a second pack, run, evaluation or sweep on a folder another process is
writing is refused at once, naming the holder; the first finishes untouched. Plus the argument
checks of evaluate and sweep that used to fail as jobs or hang (exit 2 now)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmgl_dist.evaluate.run import main as evaluate_main
from cmgl_dist.evaluate.sweep import main as sweep_main
from cmgl_dist.locks import LOCK_FILE, FolderBusy, folder_lock
from cmgl_dist.shards.pack import main as pack_main
from cmgl_dist.shards.schema import MANIFEST
from cmgl_dist.shards.verify import verify

_HOLD = "import sys; from cmgl_dist.locks import folder_lock\nwith folder_lock(sys.argv[1], 'holder'):\n" \
        "    print('held', flush=True); sys.stdin.read()"


def _wait_for_holder(folder: Path, pid: int, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if json.loads((folder / LOCK_FILE).read_text()).get("pid") == pid:
                return
        except (OSError, ValueError):
            pass
        assert process.poll() is None, f"the first writer ended (exit {process.returncode}) before taking the lock"
        time.sleep(0.005)
    raise AssertionError("the first writer never took the lock")


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_holder_frees_the_folder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FolderBusy) as busy:
            with folder_lock(tmp_path, "cmgl pack"):
                pytest.fail("two holders")
        assert f"pid {holder.pid} on" in str(busy.value) and "holder" in str(busy.value)
    finally:
        holder.kill()  # SIGKILL: no clean release, the kernel drops the lock
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # left by the killed holder, taken over below
    with folder_lock(tmp_path, "cmgl pack") as record:
        assert record["pid"] == os.getpid() and record["purpose"] == "cmgl pack"
    assert not (tmp_path / LOCK_FILE).exists()  # a clean release leaves the folder as it was


def test_two_packs_into_one_out_the_second_is_refused_and_the_first_completes(tmp_path, reports_tgz, caplog):
    out = tmp_path / "out"
    common = ["--reports", str(reports_tgz), "--images", "phantom", "--metadata", "none", "--out", str(out),
              "--image-size", "32", "--samples-per-shard", "8", "--workers", "1"]
    cmgl = str(Path(sys.executable).with_name("cmgl"))
    first = subprocess.Popen([cmgl, "pack", *common, "--limit", "40"], stderr=subprocess.DEVNULL)
    try:
        _wait_for_holder(out, first.pid, first)
        first.send_signal(signal.SIGSTOP)  # hold it mid-pack, whatever the machine's speed
        try:
            assert pack_main([*common, "--limit", "20", "--seed", "1"]) == 2  # other arguments, no --replace
        finally:
            first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
    assert f"is in use by cmgl pack (pid {first.pid} on" in caplog.text
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["inputs"]["arguments"]["limit"] == 40 and manifest["inputs"]["arguments"]["seed"] == 0
    assert verify(out) == [] and not (out / LOCK_FILE).exists()


def test_evaluate_and_sweep_refuse_an_out_in_use(tmp_path, small_shards, capsys):
    argv = ["--exports", str(tmp_path / "export"), "--shards", str(small_shards), "--out", str(tmp_path / "eval")]
    with folder_lock(tmp_path / "eval", "cmgl sweep"):
        for main in (evaluate_main, sweep_main):
            with pytest.raises(SystemExit) as stopped:
                main(argv)
            assert stopped.value.code == 2
            assert f"is in use by cmgl sweep (pid {os.getpid()} on" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--num-cpus", "0"], ["--retries", "-1"]])
def test_sweep_arguments_that_cannot_work_exit_2(tmp_path, small_shards, extra):
    with pytest.raises(SystemExit) as stopped:
        sweep_main(["--exports", str(tmp_path), "--shards", str(small_shards), "--out", str(tmp_path / "o"), *extra])
    assert stopped.value.code == 2


@pytest.mark.parametrize("fraction", ["0", "2", "nan", "inf", "-0.5", "x"])
def test_evaluate_fractions_outside_0_1_exit_2(tmp_path, small_shards, fraction):
    with pytest.raises(SystemExit) as stopped:
        evaluate_main(["--exports", str(tmp_path), "--shards", str(small_shards), "--out", str(tmp_path / "o"),
                       "--fractions", "0.5", fraction])
    assert stopped.value.code == 2


def test_evaluate_on_empty_or_broken_shards_exits_2_naming_them(tmp_path, capsys):
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    broken.mkdir()
    (broken / MANIFEST).write_text("{not json")
    for shards, why in ((empty, "has no manifest.json"), (broken, "is not valid JSON")):
        with pytest.raises(SystemExit) as stopped:
            evaluate_main(["--exports", str(tmp_path), "--shards", str(shards), "--out", str(tmp_path / "o")])
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert str(shards) in err and why in err


def test_split_all_with_the_fraction_probe_is_refused_with_the_fix(tmp_path, small_shards, capsys):
    base = ["--exports", str(tmp_path), "--shards", str(small_shards), "--out", str(tmp_path / "o"), "--split", "all"]
    with pytest.raises(SystemExit) as stopped:
        evaluate_main(base + ["--tasks", "zero_shot", "probe"])
    assert stopped.value.code == 2
    assert "--split all --tasks zero_shot probe_cv" in capsys.readouterr().err
