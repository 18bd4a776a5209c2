"""The small packed folder (conftest `small_shards`): its manifest, its samples, and determinism."""
import io
import json
import tarfile

import numpy as np
import webdataset as wds
from conftest import SMALL_SHARDS_IMAGE_SIZE, SMALL_SHARDS_PER_SHARD, SMALL_SHARDS_REPORTS
from PIL import Image

from cmgl_dist.shards.pack import pack
from cmgl_dist.shards.schema import LABEL_KEYS, MANIFEST, PATHOLOGIES, SPLITS


def _train_keys(folder, manifest):
    keys = set()
    for shard in manifest["shards"]:
        if shard["split"] == "train":
            with tarfile.open(folder / shard["name"]) as tar:
                keys |= {name.split(".", 1)[0] for name in tar.getnames()}
    return keys


def _manifest(folder):
    return json.loads((folder / MANIFEST).read_text())


def test_manifest_counts_and_positives_in_every_split(small_shards):
    manifest = _manifest(small_shards)
    assert manifest["reports_read"] == 3955
    assert manifest["samples_written"] == SMALL_SHARDS_REPORTS == manifest["images_written"]
    assert sum(manifest["splits"][s]["samples"] for s in SPLITS) == SMALL_SHARDS_REPORTS
    for split in SPLITS:
        assert all(manifest["splits"][split]["positives"][p] > 0 for p in PATHOLOGIES), split
        assert len([s for s in manifest["shards"] if s["split"] == split]) >= 2, split
    assert all(s["samples"] <= SMALL_SHARDS_PER_SHARD for s in manifest["shards"])
    reasons = {s["reason"] for s in manifest["skipped_reports"]}
    assert {"no images", "no FINDINGS or IMPRESSION text", "no usable frontal image"} <= reasons
    assert manifest["skip_reasons"]["no images"] == 104
    assert manifest["arguments"]["image_size"] == SMALL_SHARDS_IMAGE_SIZE
    assert manifest["versions"]["numpy"] == np.__version__


def test_plain_webdataset_reads_every_sample(small_shards):
    manifest = _manifest(small_shards)
    urls = [str(small_shards / s["name"]) for s in manifest["shards"]]
    keys, positives = set(), dict.fromkeys(LABEL_KEYS, 0)
    for sample in wds.WebDataset(urls, shardshuffle=False):
        keys.add(sample["__key__"])
        labels = json.loads(sample["labels.json"])
        meta = json.loads(sample["meta.json"])
        report = json.loads(sample["report.json"])
        assert list(sorted(labels)) == sorted(LABEL_KEYS)
        assert meta["uid"] == sample["__key__"] and meta["image_source"] == "phantom"
        assert meta["frontal_image"] in meta["image_ids"]
        assert report["findings"] or report["impression"]
        assert "XXXX" not in json.dumps(report)
        image = Image.open(io.BytesIO(sample["frontal.png"]))
        assert image.mode == "L" and max(image.size) == SMALL_SHARDS_IMAGE_SIZE
        with np.load(io.BytesIO(sample["masks.npz"])) as masks:
            assert set(masks.files) == {p for p in PATHOLOGIES if labels[p]}
            assert all(masks[k].shape == image.size[::-1] and masks[k].dtype == bool for k in masks.files)
        for key in LABEL_KEYS:
            positives[key] += labels[key]
    assert len(keys) == manifest["samples_written"]
    assert positives == manifest["positives"]


def _mappings(value, path="", found=None):
    """path -> the field names of the mapping there, for every mapping in a JSON value
    (`a.b`; `a[]` for the items of a list)."""
    found = {} if found is None else found
    if isinstance(value, dict):
        found.setdefault(path, set()).add(frozenset(value))
        for key, item in value.items():
            _mappings(item, f"{path}.{key}", found)
    elif isinstance(value, list):
        for item in value:
            _mappings(item, f"{path}[]", found)
    return found


def test_json_members_have_one_schema_across_samples(small_shards):
    """Columnar readers (Hugging Face `datasets`' webdataset builder) make one column per field:
    a mapping keyed by data values (image ids) would give each sample columns of its own."""
    manifest = _manifest(small_shards)
    urls = [str(small_shards / s["name"]) for s in manifest["shards"]]
    found = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        for member in ("meta.json", "labels.json", "report.json"):
            _mappings(json.loads(sample[member]), member, found)
    assert {path: len(names) for path, names in found.items() if len(names) > 1} == {}
    assert found["meta.json.view_positions[]"] == {frozenset({"image_id", "view_position"})}


def test_same_inputs_and_seed_give_identical_bytes_serial_or_parallel(small_shards, tmp_path, reports_tgz, metadata_csv):
    pack(reports=reports_tgz, images="phantom", metadata=metadata_csv, out=tmp_path,
         image_size=SMALL_SHARDS_IMAGE_SIZE, samples_per_shard=SMALL_SHARDS_PER_SHARD, seed=0,
         workers=2, limit=SMALL_SHARDS_REPORTS)
    first, second = _manifest(small_shards), _manifest(tmp_path)
    assert first["shards"] == second["shards"]
    for shard in first["shards"]:
        assert (small_shards / shard["name"]).read_bytes() == (tmp_path / shard["name"]).read_bytes()


def test_another_seed_gives_another_split(small_shards, tmp_path, reports_tgz, metadata_csv):
    manifest = pack(reports=reports_tgz, images="phantom", metadata=metadata_csv, out=tmp_path,
                    image_size=32, samples_per_shard=64, seed=1, workers=1, limit=SMALL_SHARDS_REPORTS)
    assert _train_keys(tmp_path, manifest) != _train_keys(small_shards, _manifest(small_shards))
    assert all(manifest["splits"][s]["positives"][p] > 0 for s in SPLITS for p in PATHOLOGIES)
