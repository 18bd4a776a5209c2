"""Input from outside, bounded: deep JSON/YAML in verify, --set, configs, manifests and results is a
clear error or a skipped line (never a RecursionError); .inf/.nan in float fields and one corpus
listed twice in data.sources are refused by config validation."""
from __future__ import annotations

import json

import pytest

from cmgl_dist.config import ConfigError, load_config
from cmgl_dist.engine import train
from cmgl_dist.evaluate.results import read_records
from cmgl_dist.shards.manifest import read_manifest
from cmgl_dist.shards.verify import main as verify_main

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("override", ["optimizer.lr=.inf", "loss.gamma1=.inf", "loss.global_temperature=.nan",
                                      "optimizer.betas=[0.9, .inf]"])
def test_infinite_or_nan_floats_are_refused(override, capsys):
    with pytest.raises(ConfigError, match="finite number"):
        load_config("debug", [override])
    assert train.main(["--config", "debug", "--set", override]) == 2
    assert "finite number" in capsys.readouterr().err


def test_one_corpus_listed_twice_in_data_sources_is_refused(tmp_path):
    (tmp_path / "pack").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "pack")
    for second in (f"{tmp_path}/pack/", f"{tmp_path}/link", f"{tmp_path}/./pack"):
        sources = f"data.sources=[{{shards: {tmp_path}/pack}}, {{shards: '{second}', weight: 2}}]"
        with pytest.raises(ConfigError, match="lists one corpus twice"):
            load_config("debug", [sources])
    (tmp_path / "other").mkdir()
    cfg = load_config("debug", [f"data.sources=[{{shards: {tmp_path}/pack}}, {{shards: {tmp_path}/other}}]"])
    assert len(cfg.data.sources) == 2


def test_deep_yaml_in_a_config_or_an_override_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config("debug", [f"train.steps={DEEP}"])
    deep = tmp_path / "deep.yaml"
    deep.write_text(f"train: {DEEP}\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(str(deep))


def test_deep_json_in_a_manifest_is_a_clear_error_for_verify_and_readers(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text(DEEP)
    assert verify_main([str(tmp_path)]) == 1
    assert "nested too deeply" in capsys.readouterr().err
    with pytest.raises(ValueError, match="nested too deeply"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": [1, 2]}))
    with pytest.raises(ValueError, match="lacks name, split or samples"):
        read_manifest(tmp_path)


def test_a_deep_or_undecodable_results_line_is_skipped(tmp_path):
    good = json.dumps({"job": "a", "status": "done"})
    (tmp_path / "results.jsonl").write_bytes(f"{good}\n{DEEP}\n".encode() + b"\xff\xfe\n")
    assert read_records(tmp_path / "results.jsonl") == [json.loads(good)]
