"""`cmgl pack --source ...` on small fake corpora laid out as the real ones are (folders, CSV
columns, report files), with real JPEG/PNG files: labels harmonised, splits by patient, official
splits kept, reports attached where the corpus has them, and every pack verifies."""
from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from cmgl_dist.shards.corpus_pack import pack_corpus
from cmgl_dist.shards.pack import main as pack_main
from cmgl_dist.shards.schema import LABEL_KEYS
from cmgl_dist.shards.sources import SourceError
from cmgl_dist.shards.verify import verify
from helpers import CHEXPERT_HEADER, read_pack, write_csv, write_image


def patients_in_one_split(samples: dict) -> bool:
    splits = {}
    for s in samples.values():
        splits.setdefault(s["meta.json"]["patient_id"], set()).add(s["split"])
    return all(len(v) == 1 for v in splits.values())


def labels_of(samples: dict, key: str) -> list[int]:
    return [samples[key]["labels.json"][k] for k in LABEL_KEYS]


@pytest.mark.parametrize("uncertain,edema,kept", [("ones", 1, 14), ("zeros", 0, 14), ("ignore", None, 12)])
def test_chexpert_layout_packs_frontals_with_uncertain_policy(chexpert, tmp_path, uncertain, edema, kept):
    out = tmp_path / "out"
    manifest = pack_corpus(source="chexpert", images=str(chexpert), out=out, uncertain=uncertain, image_size=32,
                           samples_per_shard=4, workers=1)
    assert verify(out) == []
    samples = read_pack(out)
    assert manifest["samples_written"] == len(samples) == kept  # 6 x 2 + 2 frontals, less patient 3 under ignore
    assert manifest["excluded"]["not frontal"] == 14
    assert {s["split"] for k, s in samples.items() if "valid_" in k} == {"test"}  # valid.csv is the test split
    assert all(s["split"] != "test" for k, s in samples.items() if "train_" in k)
    assert patients_in_one_split(samples)
    key = "chexpert_train_patient00003_study1_view1_frontal"
    if edema is None:
        assert key not in samples and manifest["excluded"]["uncertain label (--uncertain ignore)"] == 2
    else:
        assert samples[key]["labels.json"]["edema"] == edema and samples[key]["meta.json"]["uncertain"] == ["edema"]
    assert labels_of(samples, "chexpert_train_patient00002_study1_view1_frontal") == [0, 0, 0, 0, 0, 1]
    assert samples["chexpert_valid_patient00007_study1_view1_frontal"]["labels.json"]["cardiomegaly"] == 1
    meta = samples["chexpert_train_patient00001_study2_view1_frontal"]["meta.json"]
    assert meta["source"] == "chexpert" and meta["patient_id"] == "patient00001" and meta["view"] == "AP"
    assert "report.json" not in samples["chexpert_train_patient00001_study2_view1_frontal"]


def test_chexpert_plus_reports_attach(chexpert, tmp_path):
    reports = tmp_path / "df_chexpert_plus.csv"
    write_csv(reports, ["path_to_image", "section_findings", "section_impression"],
              [{"path_to_image": "train/patient00001/study1/view1_frontal.jpg", "section_findings": "Enlarged heart.",
                "section_impression": "Cardiomegaly."}])
    out = tmp_path / "out"
    manifest = pack_corpus(source="chexpert", images=str(chexpert / "CheXpert-v1.0-small"), out=out,
                           reports=str(reports), image_size=32, workers=1)
    samples = read_pack(out)
    report = samples["chexpert_train_patient00001_study1_view1_frontal"]["report.json"]
    assert report["findings"] == "Enlarged heart." and report["impression"] == "Cardiomegaly."
    assert sum(manifest["samples_with_text"].values()) == 1 and verify(out) == []


@pytest.fixture
def mimic(tmp_path) -> Path:
    """MIMIC-CXR-JPG: files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom>.jpg, the chexpert/metadata/split CSVs, report .txt."""
    root = tmp_path / "mimic-cxr-jpg" / "2.0.0"
    labels, metadata, splits = [], [], []
    official = {10000001: "train", 10000002: "train", 10000003: "validate", 10000004: "test"}
    for subject, split in official.items():
        for study in (50000000 + subject % 100 * 10, 50000001 + subject % 100 * 10):
            folder = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
            for dicom, view in ((f"d{study}a", "PA"), (f"d{study}b", "LATERAL")):
                write_image(folder / f"{dicom}.jpg", study)
                metadata.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": view})
                splits.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split})
            (folder.parent / f"s{study}.txt").write_text(
                "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
                f" FINDINGS:  Small left pleural\n effusion {study}.\n\n IMPRESSION:  Effusion.\n")
            row = dict.fromkeys(["subject_id", "study_id"] + CHEXPERT_HEADER[5:], "")
            row.update({"subject_id": subject, "study_id": study, "Pleural Effusion": "1.0",
                        "Atelectasis": "-1.0" if subject == 10000002 else "0.0"})
            labels.append(row)
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", list(labels[0]), labels)
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", list(metadata[0]), metadata)
    write_csv(root / "mimic-cxr-2.0.0-split.csv", list(splits[0]), splits)
    return root


def test_mimic_layout_packs_with_reports_and_the_official_split(mimic, tmp_path):
    out = tmp_path / "out"
    assert pack_main(["--source", "mimic", "--images", str(mimic), "--out", str(out), "--uncertain", "ones",
                      "--image-size", "32", "--workers", "2", "--samples-per-shard", "2"]) == 0
    assert verify(out) == []
    samples = read_pack(out)
    assert len(samples) == 8 and all(s["meta.json"]["view"] == "PA" for s in samples.values())
    by_patient = {s["meta.json"]["patient_id"]: s["split"] for s in samples.values()}
    assert by_patient == {"10000001": "train", "10000002": "train", "10000003": "val", "10000004": "test"}
    sample = samples["mimic_d50000010a"]
    assert sample["report.json"]["findings"] == "Small left pleural effusion 50000010."
    assert sample["report.json"]["impression"] == "Effusion."
    assert sample["labels.json"]["pleural_effusion"] == 1 and sample["labels.json"]["atelectasis"] == 0
    assert samples["mimic_d50000020a"]["labels.json"]["atelectasis"] == 1  # -1 under --uncertain ones
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["excluded"] == {"not frontal": 8} and manifest["languages"] == ["en"]


def test_padchest_layout_packs_spanish_reports_by_patient(tmp_path):
    images = tmp_path / "padchest" / "images"
    header = ["", "ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Report", "Labels"]
    rows, terms = [], [["normal"], ["cardiomegaly", "laminar atelectasis"], ["loculated pleural effusion"],
                       ["pericardial effusion"], ["pulmonary edema", "consolidation"]]
    for i in range(10):
        name = f"{1000 + i}_abc{i}.png"
        write_image(images / "0" / name, i)
        rows.append({"": i, "ImageID": name, "ImageDir": 0, "StudyID": i, "PatientID": f"pat{i // 2}",
                     "Projection": "L" if i == 9 else "PA", "Report": f" cardiomegali leve {i} .",
                     "Labels": str(terms[i % 5])})
    table = tmp_path / "padchest.csv"
    write_csv(table, header, rows)
    out = tmp_path / "out"
    manifest = pack_corpus(source="padchest", images=str(images), labels=str(table), out=out, image_size=32,
                           workers=1)
    assert verify(out) == [] and manifest["samples_written"] == 9 and manifest["languages"] == ["es"]
    samples = read_pack(out)
    assert patients_in_one_split(samples)
    assert labels_of(samples, "padchest_1000_abc0") == [0, 0, 0, 0, 0, 1]
    assert labels_of(samples, "padchest_1001_abc1") == [1, 1, 0, 0, 0, 0]
    assert labels_of(samples, "padchest_1002_abc2") == [0, 0, 0, 1, 0, 0]
    assert labels_of(samples, "padchest_1003_abc3") == [0, 0, 0, 0, 0, 0]  # pericardial is not pleural
    assert labels_of(samples, "padchest_1004_abc4") == [0, 0, 1, 0, 1, 0]
    assert samples["padchest_1001_abc1"]["report.json"]["findings"] == "cardiomegali leve 1 ."
    assert samples["padchest_1001_abc1"]["meta.json"]["language"] == "es"


def test_generic_csv_source_and_its_errors(tmp_path):
    root = tmp_path / "corpus"
    rows = []
    for i in range(6):
        write_image(root / "img" / f"{i}.png", i)
        rows.append({"path": f"img/{i}.png", "atelectasis": i % 2, "cardiomegaly": "", "edema": "-1" if i == 5 else 0,
                     "pleural_effusion": 1, "consolidation": 0, "text": "Effusion." if i < 3 else "",
                     "patient_id": f"p{i // 3}", "split": "test" if i == 0 else ""})
    table = tmp_path / "labels.csv"
    write_csv(table, list(rows[0]), rows)
    out = tmp_path / "out"
    manifest = pack_corpus(source="csv", images=str(root), labels=str(table), out=out, image_size=32, workers=1)
    samples = read_pack(out)
    assert verify(out) == [] and manifest["samples_written"] == 6
    assert {s["split"] for s in samples.values() if s["meta.json"]["patient_id"] == "p0"} == {"test"}
    assert labels_of(samples, "csv_img_1") == [1, 0, 0, 1, 0, 0]
    assert "report.json" in samples["csv_img_0"] and "report.json" not in samples["csv_img_4"]
    with pytest.raises(SourceError, match="needs --labels"):
        pack_corpus(source="csv", images=str(root), out=tmp_path / "x", workers=1)
    write_csv(table, ["path", "atelectasis"], [{"path": "img/0.png", "atelectasis": 1}])
    with pytest.raises(SourceError, match="missing column"):
        pack_corpus(source="csv", images=str(root), labels=str(table), out=tmp_path / "y", workers=1)


def test_a_nih_archive_tar_or_zip_packs_like_its_folder(tmp_path):
    folder = tmp_path / "images"
    rows = []
    for i in range(5):
        name = f"{i:08d}_000.png"
        write_image(folder / name, i)
        rows.append({"Image Index": name, "Finding Labels": ["Effusion|Atelectasis", "No Finding", "Edema", "Hernia",
                                                              "Consolidation|Cardiomegaly"][i],
                     "Patient ID": i, "View Position": "PA"})
    table = tmp_path / "entries.csv"
    write_csv(table, list(rows[0]), rows)
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="images")
    zipped = tmp_path / "images.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"images/{path.name}")
    outs = [tmp_path / "a", tmp_path / "b", tmp_path / "z"]
    for images, out in zip((folder, archive, zipped), outs):
        assert pack_main(["--source", "nih", "--images", str(images), "--labels", str(table), "--out", str(out),
                          "--image-size", "32", "--workers", "1"]) == 0
    a, b, z = (read_pack(o) for o in outs)
    assert set(a) == set(b) == set(z) and all(a[k]["labels.json"] == b[k]["labels.json"] == z[k]["labels.json"] for k in a)
    assert labels_of(a, "nih_00000000_000") == [1, 0, 0, 1, 0, 0] and labels_of(a, "nih_00000003_000") == [0] * 6
    with pytest.raises(SystemExit, match="2"):  # IU-RR's --metadata means nothing to NIH: a usage error
        pack_main(["--source", "nih", "--images", str(folder), "--metadata", "x.csv", "--out", str(tmp_path / "c")])
