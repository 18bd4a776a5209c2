"""`cmgl evaluate` on a tiny exported model: results.jsonl, table.md and the PNGs, well-formed."""
import json
import shutil
import re

import numpy as np
import pytest
import torch
from PIL import Image

from cmgl_dist.config import load_config
from cmgl_dist.engine.export import export_model
from cmgl_dist.evaluate.report import build_table
from cmgl_dist.evaluate.run import main as evaluate_main
from cmgl_dist.model import build_model
from cmgl_dist.shards.manifest import shards_sha256
from cmgl_dist.shards.schema import PATHOLOGIES

LOCALISATION = ["Attention mass in mask", "Pointing game", "Chance (mask share)"]
AUC_HEADER = ["Setting", "Atelectasis", "Cardiomegaly", "Edema", "Pleural effusion", "Consolidation", "Mean"]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, small_shards):
    cfg = load_config("debug", [f"data.shards={small_shards}", "eval.bootstrap=200"])
    torch.manual_seed(0)
    return export_model(build_model(cfg.model).state_dict(), cfg, tmp_path_factory.mktemp("run") / "export")


@pytest.fixture(scope="module")
def evaluated(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    code = evaluate_main(["--exports", str(tiny_export), "--out", str(out), "--fractions", "0.1", "1.0", "--n-prompts", "4"])
    return out, code


def _markdown_tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def _cell_ok(cell: str) -> bool:
    value, _, interval = cell.partition(" [")
    low, high = (float(x) for x in interval.rstrip("]").split(", "))
    return 0.0 <= low <= float(value) <= high <= 1.0


def test_every_job_succeeds_and_is_recorded(evaluated):
    out, code = evaluated
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert code == 0
    assert sorted(r["setting"] for r in records) == sorted(
        ["zero-shot", "zero-shot vs negation", "retrieval", "probe 10%", "probe 100%", "localisation", "attention"])
    assert all(r["status"] == "ok" for r in records)
    probe = next(r for r in records if r["setting"] == "probe 10%")
    assert probe["n_train"] < next(r for r in records if r["setting"] == "probe 100%")["n_train"]


def test_table_has_the_paper_shape(evaluated):
    out, _ = evaluated
    auc, retrieval, paired, prompts = _markdown_tables((out / "table.md").read_text())
    assert auc[0] == AUC_HEADER
    assert [row[0] for row in auc[2:]] == ["zero-shot", "zero-shot vs negation", "probe 10%", "probe 100%"]
    for row in auc[2:]:
        assert all(_cell_ok(cell) for cell in row[1:]), row
    assert retrieval[0] == ["Direction", "R@1 (chance)", "R@5 (chance)", "R@10 (chance)"] and len(retrieval) == 4
    n_test = int(re.search(r"Candidates: (\d+) test pairs", (out / "table.md").read_text()).group(1))
    assert all(cell.endswith(f"({10 / n_test:.3f})") for cell in [row[3] for row in retrieval[2:]])
    assert re.search(r"precision, image -> report P@10 .*: \d\.\d{3} \(\d\.\d{3}\)\.", (out / "table.md").read_text())
    assert paired[0] == ["Finding", "Masks scored", "Not scored (no finding word in the report)"] + LOCALISATION
    assert prompts[0] == ["Finding", "Masks scored"] + LOCALISATION
    assert paired[-1][0] == prompts[-1][0] == "All"
    # every mask in the crop is scored by the prompts, and by its report or counted as not scored
    assert int(paired[-1][1].split()[0]) + int(paired[-1][2]) == int(prompts[-1][1].split()[0]) > 0
    for row in paired[2:] + prompts[2:]:  # mass, pointing and chance each beside their interval
        assert all(_cell_ok(cell) for cell in row[-3:] if cell != "n/a"), row
    record = next(r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())
                  if r["task"] == "localisation")
    assert record["localisation"]["all"]["unscored"] == int(paired[-1][2])
    # every finding with a scorable report reaches eval.localisation_min_masks through renderings
    scored = {p: s for p, s in record["localisation"].items() if p != "all" and s["n"]}
    assert scored and all(s["n"] >= 30 and s["reports"] < s["n"] for s in scored.values()), scored
    assert "unscored" not in record["localisation_prompts"]["all"]


def test_a_localisation_record_of_the_prompt_only_format_still_renders():
    old = {"n": 3, "mass": 0.07, "pointing": 0.333, "mask_share": 0.072}
    record = {"status": "ok", "task": "localisation", "export": "e", "corpus": "c", "split": "test",
              "localisation": {"edema": old, "all": old}}
    text = build_table([record])
    (prompts,) = _markdown_tables(text)
    assert prompts[0] == ["Finding", "Masks scored"] + LOCALISATION
    assert prompts[2:] == [["Edema", "3", "0.070", "0.333", "0.072"], ["All", "3", "0.070", "0.333", "0.072"]]
    assert "Paired-report protocol: not in this record" in text and "Class-prompt protocol" in text


def test_roc_and_attention_pngs_open(evaluated):
    out, _ = evaluated
    for pathology in PATHOLOGIES:
        with Image.open(out / f"roc_{pathology}.png") as image:
            assert image.format == "PNG" and image.size[0] > 100
    figures = sorted((out / "attention").rglob("*.png"))
    assert len(figures) == 4
    with Image.open(figures[0]) as image:
        assert image.width > 2 * image.height  # the image and its word panels side by side


def test_rerun_skips_finished_jobs(evaluated, tiny_export):
    out, _ = evaluated
    before = (out / "results.jsonl").read_text()
    assert evaluate_main(["--exports", str(tiny_export), "--out", str(out), "--fractions", "0.1", "1.0", "--n-prompts", "4"]) == 0
    assert (out / "results.jsonl").read_text() == before


def test_finetune_row(tiny_export, tmp_path):
    assert evaluate_main(["--exports", str(tiny_export), "--out", str(tmp_path), "--tasks", "finetune",
                          "--fractions", "0.5"]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert record["setting"] == "fine-tune 50%" and record["n_test"] > 0
    (auc,) = _markdown_tables((tmp_path / "table.md").read_text())
    assert auc[2][0] == "fine-tune 50%" and all(_cell_ok(cell) for cell in auc[2][1:])


def _retrieval_records(out):
    return [r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines()) if r["task"] == "retrieval"]


def test_rerun_with_another_split_answers_that_split(tiny_export, small_shards, tmp_path):
    argv = ["--exports", str(tiny_export), "--out", str(tmp_path), "--tasks", "retrieval"]
    assert evaluate_main(argv) == 0
    assert evaluate_main(argv + ["--split", "val"]) == 0
    test_run, val_run = _retrieval_records(tmp_path)
    manifest = json.loads((small_shards / "manifest.json").read_text())
    assert (test_run["n_test"], val_run["n_test"]) == (manifest["splits"]["test"]["samples"],
                                                       manifest["splits"]["val"]["samples"])
    assert f"Candidates: {val_run['n_test']} test pairs." in (tmp_path / "table.md").read_text()


def test_a_repack_in_place_is_not_served_from_old_results_or_features(tiny_export, small_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(small_shards, shards)
    argv = ["--exports", str(tiny_export), "--out", str(tmp_path / "eval"), "--shards", str(shards), "--tasks", "retrieval"]
    assert evaluate_main(argv) == 0
    # "repack" the folder with one test shard fewer (what a new pack with other inputs would do)
    manifest = json.loads((shards / "manifest.json").read_text())
    dropped = [s for s in manifest["shards"] if s["split"] == "test"][-1]
    manifest["shards"].remove(dropped)
    manifest["shards_sha256"] = shards_sha256(manifest["shards"])
    (shards / "manifest.json").write_text(json.dumps(manifest))
    assert evaluate_main(argv) == 0
    before, after = _retrieval_records(tmp_path / "eval")
    assert after["n_test"] == before["n_test"] - dropped["samples"]


def _zero_shot_scores(out):
    (record,) = [r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines()) if r["task"] == "zero_shot"]
    return np.load(out / record["scores_file"])["scores"]


def test_eval_word_pooling_override_is_the_one_computed(tiny_export, tmp_path):
    """`--set eval.zero_shot_word_pooling=...` keys the record and must also be what the job computes
    (the jobs once read the export's config instead, so a 'max' record held log-sum-exp scores)."""
    argv = ["--exports", str(tiny_export), "--tasks", "zero_shot", "--n-prompts", "4"]
    assert evaluate_main(argv + ["--out", str(tmp_path / "lse"), "--set", "eval.zero_shot_word_pooling=logsumexp"]) == 0
    assert evaluate_main(argv + ["--out", str(tmp_path / "max"), "--set", "eval.zero_shot_word_pooling=max"]) == 0
    lse, pooled_max = _zero_shot_scores(tmp_path / "lse"), _zero_shot_scores(tmp_path / "max")
    assert not np.allclose(lse, pooled_max)


def test_records_made_under_another_results_version_are_recomputed(tiny_export, tmp_path, monkeypatch):
    from cmgl_dist.evaluate import context

    argv = ["--exports", str(tiny_export), "--out", str(tmp_path), "--tasks", "localisation", "--n-prompts", "2"]
    assert evaluate_main(argv) == 0
    monkeypatch.setattr(context, "RESULTS_VERSION", context.RESULTS_VERSION + 1)
    assert evaluate_main(argv) == 0
    first, second = map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())
    assert first["inputs_key"] != second["inputs_key"]
    assert second["inputs"]["results_version"] == context.RESULTS_VERSION
