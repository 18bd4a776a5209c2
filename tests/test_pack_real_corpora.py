"""Real radiographs in ../shared/data/real-cxr: the 354 NIH ChestX-ray14 PNGs pack with
`--source nih` (labels from torchxrayvision's table), verify, and carry the table's labels;
the one real IU-RR image joins report uid 3. Skipped, with the reason, where the data is absent."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cmgl_dist.shards.download import packaged_file
from cmgl_dist.shards.pack import pack
from cmgl_dist.shards.pack import main as pack_main
from cmgl_dist.shards.verify import verify
from helpers import read_pack

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-cxr"
NIH = REAL / "nih-cxr14-reproduce-chexnet"
IU_IMAGE = REAL / "iu-wangleihitcs-thoraxdiseaseclassification"
FIVE = {"atelectasis": "Atelectasis", "cardiomegaly": "Cardiomegaly", "edema": "Edema",
        "pleural_effusion": "Effusion", "consolidation": "Consolidation"}


@pytest.fixture(scope="module")
def nih_pack(tmp_path_factory) -> Path:
    if not NIH.is_dir():
        pytest.skip(f"no real NIH images at {NIH}")
    if packaged_file("Data_Entry_2017_v2020.csv.gz") is None:
        pytest.skip("torchxrayvision's Data_Entry_2017_v2020.csv.gz is not installed")
    out = tmp_path_factory.mktemp("nih")
    assert pack_main(["--source", "nih", "--images", str(NIH), "--out", str(out), "--image-size", "64",
                      "--workers", "2"]) == 0
    return out


def test_the_354_nih_images_pack_verify_and_keep_the_tables_labels(nih_pack):
    assert verify(nih_pack) == []
    with open(NIH / "nih_data_entry_2017_v2020_subset.csv", newline="") as f:
        table = {row["Image Index"]: row for row in csv.DictReader(f)}
    samples = read_pack(nih_pack)
    labels = {key: s["labels.json"] for key, s in samples.items()}
    assert len(labels) == len(table) == 354
    for key, meta in ((key, s["meta.json"]) for key, s in samples.items()):
        row = table[meta["frontal_image"]]
        found = set(row["Finding Labels"].split("|"))
        assert {k: labels[key][k] for k in FIVE} == {k: int(v in found) for k, v in FIVE.items()}, key
        assert labels[key]["normal"] == int("No Finding" in found)
        assert meta["patient_id"] == row["Patient ID"] and meta["view"] == row["View Position"]
        assert meta["source"] == "nih" and meta["frontal_size"] == [64, 64]
    manifest = json.loads((nih_pack / "manifest.json").read_text())
    assert manifest["positives"] == {"atelectasis": 92, "cardiomegaly": 56, "edema": 18, "pleural_effusion": 82,
                                     "consolidation": 81, "normal": 100}  # SOURCE.md's counts
    assert manifest["samples_with_text"] == {"train": 0, "val": 0, "test": 0}
    assert all(manifest["splits"][s]["samples"] for s in ("train", "val", "test"))


def test_the_real_iurr_image_joins_report_3(reports_tgz, metadata_csv, tmp_path):
    if not IU_IMAGE.is_dir():
        pytest.skip(f"no real IU-RR image at {IU_IMAGE}")
    manifest = pack(reports=reports_tgz, images=str(IU_IMAGE), metadata=metadata_csv, out=tmp_path, image_size=64,
                    samples_per_shard=8, workers=1)
    assert manifest["samples_written"] == 1 and verify(tmp_path) == []
    (key, sample), = read_pack(tmp_path).items()
    meta, labels = sample["meta.json"], sample["labels.json"]
    assert key == "CXR3" and meta["frontal_image"] == "CXR3_IM-1384-1001" and meta["image_source"] == "real"
    assert labels["normal"] == 1 and not any(labels[k] for k in FIVE)  # MeSH major: normal


def test_external_evaluation_on_the_real_nih_pack(nih_pack, tmp_path):
    """Zero-shot and the 5-fold patient-grouped probe over all 354 images, the corpus named in the
    table (a debug-config export: the command is what matters here, not its AUCs)."""
    import torch

    from cmgl_dist.config import load_config
    from cmgl_dist.engine.export import export_model
    from cmgl_dist.evaluate.run import main as evaluate_main
    from cmgl_dist.model import build_model

    cfg = load_config("debug", [f"data.shards={nih_pack}", "eval.bootstrap=50"])
    torch.manual_seed(0)
    export = export_model(build_model(cfg.model).state_dict(), cfg, tmp_path / "run" / "export")
    out = tmp_path / "eval"
    assert evaluate_main(["--exports", str(export), "--shards", str(nih_pack), "--out", str(out), "--split", "all",
                          "--tasks", "zero_shot", "probe_cv", "--folds", "5", "--n-prompts", "2"]) == 0
    records = {r["task"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    probe = records["probe_cv"]
    assert probe["folds"] == 5 and sum(probe["fold_sizes"]) == probe["n_test"] == 354
    assert probe["aucs"]["n_pos"]["edema"] == 18 and probe["setting"] == "probe 5-fold CV"
    assert records["zero_shot"]["n_test"] == 354 and records["zero_shot"]["corpus"] == f"nih ({nih_pack.name})"
    table = (out / "table.md").read_text()
    assert f"on nih ({nih_pack.name}), split all" in table and "| probe 5-fold CV |" in table
    assert "mean AUC per fold" in table
