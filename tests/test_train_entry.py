"""`cmgl train`'s entry point: rank-aware logging, teardown however training ends, exact resume
field matching, one atomic config writer, and a config check that needs no torch."""
import logging
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from cmgl_dist import config as config_module
from cmgl_dist.config import load_config, save_config
from cmgl_dist.engine import distributed, train
from cmgl_dist.engine.resume import resume_applies
from cmgl_dist.logs import init_logger


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:], root.level = handlers, level


def test_rank_zero_logs_info_other_ranks_only_warnings(root_logging, capsys):
    init_logger(0)
    init_logger(0)  # again: still one handler of ours
    assert root_logging.level == logging.INFO
    logging.getLogger("cmgl.test").info("rank zero speaks")
    assert capsys.readouterr().err.count("[rank 0] cmgl.test INFO rank zero speaks") == 1
    init_logger(1)
    assert root_logging.level == logging.WARNING
    logging.getLogger("cmgl.test").info("rank one stays quiet")
    logging.getLogger("cmgl.test").warning("rank one warns")
    err = capsys.readouterr().err
    assert "quiet" not in err and "[rank 1] cmgl.test WARNING rank one warns" in err


def test_resume_fields_match_exactly_and_sections_by_prefix():
    assert resume_applies("train.steps") and resume_applies("name")
    assert resume_applies("eval.split")  # eval is declared a section
    assert not resume_applies("train.steps_per_epoch")
    assert not resume_applies("names")
    assert not resume_applies("optimizer.lr")


def test_the_process_group_is_destroyed_when_training_fails(monkeypatch, tmp_path):
    def one_rank_world(*_timeout):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        return distributed.World(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"))

    def failing_fit(*_args):
        assert dist.is_initialized()
        raise RuntimeError("training broke")

    monkeypatch.setattr(train, "init_distributed", one_rank_world)
    monkeypatch.setattr(train, "fit", failing_fit)
    with pytest.raises(RuntimeError, match="training broke"):
        train.train(load_config("debug", [f"train.run_dir={tmp_path}"]), None, None)
    assert not dist.is_initialized()


def test_config_yaml_is_replaced_whole_or_not_at_all(monkeypatch, tmp_path):
    path = tmp_path / "config.yaml"
    save_config(load_config("debug"), path)
    written = path.read_text()
    assert load_config(str(path)) == load_config("debug")

    def broken_dump(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(config_module.yaml, "safe_dump", broken_dump)
    with pytest.raises(OSError):
        save_config(load_config("debug", ["train.steps=7"]), path)
    assert path.read_text() == written
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_the_kernel_gamma_limits_are_checked_without_importing_torch():
    code = ("import sys\nfrom cmgl_dist.config import ConfigError, load_config\n"
            "try:\n    load_config(None, ['loss.local_backend=triton', 'loss.gamma1=61'])\n"
            "except ConfigError as err:\n    assert 'loss.gamma1 <= 60.0' in str(err), err\n"
            "else:\n    raise SystemExit('accepted')\n"
            "assert 'torch' not in sys.modules, 'config imported torch'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
