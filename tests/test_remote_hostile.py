"""Remote packs from a hostile or broken server (real servers on 127.0.0.1): shard names from a
manifest never reach a command unchecked, every read ends within its limits (a server that accepts
and never answers, one that answers 500), a shard cut off inside its first sample counts its lost
samples, and a password in a URL is used but never printed."""
from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cmgl_dist.config import ConfigError, DataConfig, load_config
from cmgl_dist.data import make_loader
from cmgl_dist.data.shardlist import samples_without_text, shard_sample_counts, shard_urls, shards_fingerprint
from cmgl_dist.engine import train
from cmgl_dist.evaluate.run import check_shards
from cmgl_dist.shards.location import pack_file
from cmgl_dist.shards.verify import verify

from helpers import free_port

CMGL = str(Path(sys.executable).with_name("cmgl"))
FAST = {"CMGL_HTTP_STALL_TIMEOUT": "1", "CMGL_HTTP_RETRIES": "1", "CMGL_HTTP_CONNECT_TIMEOUT": "2"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files of the served folder, except: /error/* answers 500; /cut/train-000000.tar sends the full
    Content-Length and then only the first 300 bytes (inside the first member's header)."""

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        if self.path.startswith("/error/"):
            self.send_error(500)
            return
        if self.path == "/cut/train-000000.tar":
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:300])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def served(tmp_path_factory, small_shards):
    """(root, base URL): `pack/` a sound pack, `evil/` its copy whose manifest lists a shard named
    `x.tar;touch <root>/PWNED;:`, `cut/` a sound copy whose first train shard the server cuts short."""
    root = tmp_path_factory.mktemp("hostile")
    for name in ("pack", "evil", "cut"):
        shutil.copytree(small_shards, root / name, ignore=shutil.ignore_patterns(".*"))
    manifest = json.loads((root / "evil" / "manifest.json").read_text())
    manifest["shards"][0]["name"] = f"x.tar;touch {root}/PWNED;:"
    (root / "evil" / "manifest.json").write_text(json.dumps(manifest))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()),
                                             lambda *a: _Handler(*a, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_port():
    """A port whose kernel completes every TCP handshake and whose server never reads or answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_a_hostile_shard_name_in_a_manifest_runs_nothing_at_any_entry_point(served, tmp_path, monkeypatch, capsys):
    root, base = served
    for location in (f"pipe:curl -s -f {base}/evil/{{name}}", f"{base}/evil", str(root / "evil")):
        for read in (lambda: shard_urls(location, "train"), lambda: shards_fingerprint(location),
                     lambda: samples_without_text(location, "train")):
            with pytest.raises(ValueError, match="is not a shard of this format"):
                read()
        with pytest.raises(ConfigError, match="not a shard of this format"):  # cmgl evaluate / sweep
            check_shards(location, "test")
        assert any("not a shard of this format" in p for p in verify(location))
    with pytest.raises(ValueError, match="refused"):
        pack_file(f"pipe:cat {root}/pack/{{name}}", "train-000000.tar;touch PWNED;:")
    # cmgl train: exit 2 with one line, before any shard is opened
    monkeypatch.setenv("WORLD_SIZE", "1")
    argv = ["--config", "debug", "--set", f"data.shards=pipe:curl -s -f {base}/evil/{{name}}",
            "--set", f"train.run_dir={tmp_path / 'run'}"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "not a shard of this format" in err and len(err.strip().splitlines()) == 1
    assert not (root / "PWNED").exists()


def test_a_server_that_never_answers_fails_within_its_limits(served, silent_port, tmp_path):
    env = {**__import__("os").environ, **FAST}
    start = time.monotonic()
    done = subprocess.run([CMGL, "verify", f"http://127.0.0.1:{silent_port}/pack"], capture_output=True,
                          text=True, env=env, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 1 and elapsed < 30, (done.returncode, elapsed)
    assert "timed out" in done.stderr and "Will retry in 1 second" in done.stderr  # curl says what it waits for


def test_a_5xx_is_reported_in_seconds(served):
    _, base = served
    env = {**__import__("os").environ, "CMGL_HTTP_RETRIES": "2"}
    start = time.monotonic()
    done = subprocess.run([CMGL, "verify", f"{base}/error/pack"], capture_output=True, text=True, env=env, timeout=90)
    elapsed = time.monotonic() - start
    assert done.returncode == 1 and elapsed < 20, (done.returncode, elapsed)
    assert "500" in done.stderr and "HTTP error status" in done.stderr


def test_a_shard_cut_inside_its_first_sample_counts_its_samples_as_lost(served, minilm_tokenizer, monkeypatch):
    monkeypatch.setenv("CMGL_HTTP_RETRIES", "0")
    _, base = served
    urls = shard_urls(f"{base}/cut", "train")
    cfg = DataConfig(image_size=64, crop_size=48, max_length=32, shuffle_buffer=1, workers=0, on_missing_shard="fail")
    batches = list(make_loader(urls, cfg, minilm_tokenizer, batch_size=4, seed=2, train=False))
    counts = shard_sample_counts(urls)
    read, lost = sum(len(b["keys"]) for b in batches), sum(b["skipped"] for b in batches)
    assert urls[0].endswith("/cut/train-000000.tar")
    assert read + lost == sum(counts) and lost == counts[0]  # counted as lost, not a ShardMissingError


def test_a_password_in_a_url_is_used_but_never_printed(served, capfd, monkeypatch):
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    problems = verify(f"http://reader:s3cret@127.0.0.1:{free_port()}/pack")  # nothing listens: refused
    out = capfd.readouterr()
    assert problems and "***@127.0.0.1" in problems[0]
    assert "s3cret" not in " ".join(problems) + out.err + out.out
    # the password reached the server: curl sends it (Basic auth) though it is in no argv
    _, base = served
    assert shard_urls(f"http://reader:s3cret@{base[len('http://'):]}/pack", "train")


@pytest.mark.parametrize("address", ["not an address", "127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_a_bad_or_unreachable_ray_address_fails_at_once_in_one_line(address, tmp_path, reports_tgz, caplog):
    from cmgl_dist.shards.pack import main as pack_main

    address = address.format(port=free_port())  # nothing listens there: refused
    start = time.monotonic()
    assert pack_main(["--reports", str(reports_tgz), "--images", "phantom", "--out", str(tmp_path / "out"),
                      "--limit", "4", "--image-size", "32", "--ray", address]) == 2
    assert time.monotonic() - start < 15
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "--ray" in errors[0].getMessage() and "\n" not in errors[0].getMessage()


def test_the_limits_are_checked(monkeypatch):
    from cmgl_dist.shards.remote import Limits

    monkeypatch.setenv("CMGL_HTTP_STALL_TIMEOUT", "nan")
    with pytest.raises(ValueError, match="CMGL_HTTP_STALL_TIMEOUT"):
        Limits.from_env()
    monkeypatch.setenv("CMGL_HTTP_STALL_TIMEOUT", "5")
    monkeypatch.setenv("CMGL_HTTP_RETRIES", "1000")
    with pytest.raises(ValueError, match="CMGL_HTTP_RETRIES"):
        Limits.from_env()
