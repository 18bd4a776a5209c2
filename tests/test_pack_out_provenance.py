"""`--out` holds only what pack wrote; a pack records its inputs and reuses or refuses, never mixes."""
import io
import json
import logging
import tarfile

import numpy as np
import pytest
from PIL import Image

from cmgl_dist import pipeline
from cmgl_dist.shards.pack import main
from cmgl_dist.shards.schema import MANIFEST
from cmgl_dist.shards.verify import verify
from helpers import write_inputs

UIDS = ["CXR1", "CXR2", "CXR3", "CXR4"]


def _pack(reports, images, out, *extra):
    return main(["--reports", str(reports), "--images", str(images), "--out", str(out), "--image-size", "32",
                 "--workers", "1", "--metadata", "none", "--samples-per-shard", "2", *extra])


def _pixels(out):
    values = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith("frontal.png"):
                    values[member.name] = int(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read()))).mean())
    return values


def _archive(images, path):
    with tarfile.open(path, "w:gz") as tar:
        for image in sorted(images.iterdir()):
            tar.add(image, arcname=f"png/{image.name}")
    return path


@pytest.mark.parametrize("foreign", ["draft.tmp", "train-000123.tar", "notes/readme.txt"])
def test_a_folder_with_files_pack_did_not_write_is_refused_and_left_alone(tmp_path, foreign, caplog):
    reports, images = write_inputs(tmp_path, UIDS)
    out = tmp_path / "out"
    (out / foreign).parent.mkdir(parents=True)
    (out / foreign).write_bytes(b"someone else's work")
    with caplog.at_level(logging.ERROR, logger="cmgl.pack"):
        assert _pack(reports, images, out) == 1
    assert (out / foreign).read_bytes() == b"someone else's work"
    assert not (out / MANIFEST).exists()
    assert foreign.split("/")[0] in caplog.text


def test_a_foreign_shard_dropped_into_an_own_pack_is_never_overwritten(tmp_path, caplog):
    reports, images = write_inputs(tmp_path, UIDS)
    out = tmp_path / "out"
    assert _pack(reports, images, out) == 0
    (out / "draft.tmp").write_text("mine")
    killed_writers = [".train-000000.tar.unrenamed", "..train-000000.tar.unrenamed.99.tmp", ".manifest.json.99.tmp"]
    for name in killed_writers:
        (out / name).write_text("left by a killed pack")
    assert _pack(reports, images, out) == 0
    assert (out / "draft.tmp").read_text() == "mine"  # never deleted
    assert not any((out / name).exists() for name in killed_writers)
    (out / "train-000999.tar").write_text("not from this pack")
    with caplog.at_level(logging.ERROR, logger="cmgl.pack"):
        assert _pack(reports, images, out) == 1
    assert (out / "train-000999.tar").read_text() == "not from this pack" and "train-000999.tar" in caplog.text


def test_other_arguments_into_the_same_pack_are_refused_naming_the_difference(tmp_path, caplog):
    reports, images = write_inputs(tmp_path, UIDS)
    out = tmp_path / "out"
    assert _pack(reports, images, out) == 0
    first = json.loads((out / MANIFEST).read_text())
    with caplog.at_level(logging.ERROR, logger="cmgl.pack"):
        assert main(["--reports", str(reports), "--images", str(images), "--out", str(out), "--image-size", "48",
                     "--workers", "1", "--metadata", "none", "--samples-per-shard", "2"]) == 1
    assert "image_size: 32 -> 48" in caplog.text and "--replace" in caplog.text
    assert json.loads((out / MANIFEST).read_text()) == first  # the finished pack is untouched
    assert _pack(reports, images, out) == 0  # the same inputs again: reused
    assert json.loads((out / MANIFEST).read_text())["shards"] == first["shards"]


def test_another_archive_is_refused_then_repacked_from_its_own_images(tmp_path, caplog):
    reports, dark = write_inputs(tmp_path / "a", UIDS, image_value=20)
    _, bright = write_inputs(tmp_path / "b", UIDS, image_value=220)
    archive = tmp_path / "images.tgz"
    out = tmp_path / "out"
    assert _pack(reports, _archive(dark, archive), out) == 0
    assert set(_pixels(out).values()) == {20}
    _archive(bright, archive)  # same path, same member names, other content
    with caplog.at_level(logging.ERROR, logger="cmgl.pack"):
        assert _pack(reports, archive, out) == 1
    assert "images" in caplog.text
    assert _pack(reports, archive, out, "--replace") == 0
    assert set(_pixels(out).values()) == {220}
    assert verify(out) == []


def test_the_manifest_records_inputs_and_a_content_fingerprint_of_the_shards(tmp_path):
    reports, images = write_inputs(tmp_path / "a", UIDS, image_value=20)
    _, other = write_inputs(tmp_path / "b", UIDS, image_value=90)
    assert _pack(reports, images, tmp_path / "one") == 0
    assert _pack(reports, images, tmp_path / "two") == 0
    assert _pack(reports, other, tmp_path / "three") == 0
    one, two, three = (json.loads((tmp_path / n / MANIFEST).read_text()) for n in ("one", "two", "three"))
    assert one["inputs"]["arguments"]["image_size"] == 32 and len(one["inputs"]["images"]["sha256"]) == 64
    assert one["shards_sha256"] == two["shards_sha256"] != three["shards_sha256"]


def test_cmgl_main_does_not_ignore_a_new_image_size(tmp_path, monkeypatch):
    """With a pack in OUT/shards, `cmgl main --image-size` other than its own stops before training."""
    reports, images = write_inputs(tmp_path, UIDS)
    out = tmp_path / "outputs"
    assert _pack(reports, images, out / "shards") == 0
    stages = []
    real_run_stage = pipeline.run_stage

    def run_stage(name, cmd):
        stages.append(name)
        if name == "train":
            raise AssertionError("training started on a pack made with other arguments")
        return real_run_stage(name, cmd)

    monkeypatch.setattr(pipeline, "run_stage", run_stage)
    with pytest.raises(SystemExit, match="stage 'pack' failed"):
        pipeline.main(["--out", str(out), "--reports", str(reports), "--images", str(images), "--metadata", "none",
                       "--image-size", "48", "--workers", "1", "--skip-eval"])
    assert stages == ["pack"]


def test_a_pack_that_produced_nothing_does_not_hold_its_folder(tmp_path):
    reports, images = write_inputs(tmp_path, UIDS)
    out = tmp_path / "out"
    assert _pack(reports, tmp_path / "nothing", out) == 1  # no such image source: nothing written
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _pack(reports, empty, out) == 1  # claimed, but no usable image
    assert _pack(reports, images, out) == 0  # the corrected inputs are not refused


def test_corpus_packs_claim_their_folder_and_record_their_inputs(chexpert, tmp_path):
    from cmgl_dist.shards.corpus_pack import pack_corpus
    from cmgl_dist.shards.outdir import OutRefused

    out = tmp_path / "out"
    out.mkdir()
    (out / "draft.tmp").write_text("mine")
    with pytest.raises(OutRefused, match="draft.tmp"):
        pack_corpus(source="chexpert", images=str(chexpert), out=out, image_size=32, workers=1)
    assert (out / "draft.tmp").read_text() == "mine"
    out = tmp_path / "fresh"
    first = pack_corpus(source="chexpert", images=str(chexpert), out=out, image_size=32, workers=1)
    assert first["inputs"]["arguments"]["uncertain"] == "zeros" and len(first["shards_sha256"]) == 64
    with pytest.raises(OutRefused, match="uncertain: zeros -> ones"):
        pack_corpus(source="chexpert", images=str(chexpert), out=out, image_size=32, workers=1, uncertain="ones")
    again = pack_corpus(source="chexpert", images=str(chexpert), out=out, image_size=32, workers=1,
                        uncertain="ones", replace=True)
    assert again["shards_sha256"] != first["shards_sha256"] and verify(out) == []
