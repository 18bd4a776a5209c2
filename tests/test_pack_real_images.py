"""The four real IU-RR images in ../shared/data/iu-rr/samples join to reports 1900 and 7."""
import io
import json
import tarfile

import pytest
from PIL import Image

from cmgl_dist.shards.pack import pack
from cmgl_dist.shards.reports import read_reports
from cmgl_dist.shards.verify import verify


@pytest.fixture(scope="module")
def samples_dir(iurr_dir):
    if iurr_dir is None or not (iurr_dir / "samples").is_dir():
        pytest.skip("no ../shared/data/iu-rr/samples")
    return iurr_dir / "samples"


def test_real_sample_images_join_reports_1900_and_7(samples_dir, reports_tgz, metadata_csv, tmp_path):
    manifest = pack(reports=reports_tgz, images=str(samples_dir), metadata=metadata_csv, out=tmp_path,
                    image_size=64, samples_per_shard=8, workers=1)
    assert manifest["image_source"] == "real"
    assert manifest["samples_written"] == 2 and manifest["images_written"] == 4
    missing = [s for s in manifest["skipped_images"] if s["reason"] == "missing file"]
    reports, _ = read_reports(reports_tgz)
    assert len(missing) == sum(len(r.image_ids) for r in reports if r.has_text) - 4
    assert not any(s["uid"] in ("CXR1900", "CXR7") for s in missing)
    metas = {}
    for shard in manifest["shards"]:
        with tarfile.open(tmp_path / shard["name"]) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                data = tar.extractfile(member).read()
                if ext == "meta.json":
                    metas[key] = json.loads(data)
                elif ext in ("frontal.png", "lateral.png"):
                    assert max(Image.open(io.BytesIO(data)).size) == 64
    assert set(metas) == {"CXR1900", "CXR7"}
    for uid, meta in metas.items():
        assert meta["frontal_image"].endswith("-1001") and meta["lateral_image"].endswith("-2001")
        assert meta["image_source"] == "real" and meta["view_rule"] in ("metadata", "fallback-xml-order")
    assert verify(tmp_path) == []
