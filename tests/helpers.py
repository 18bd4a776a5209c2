"""What the tests share (tests never import from one another): hand-made pack inputs (IU-RR report
XML and images, a CheXpert-like corpus), reading a pack back, random model outputs for the losses,
and local-similarity inputs with the relative-error check the kernel and backend tests hold.

The float64 GLoRIA references are not here: they are the tests' oracle, in their own module.
"""
from __future__ import annotations

import csv
import io
import json
import signal
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from xml.sax.saxutils import quoteattr

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

_CONTROL = {"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}  # kept by the XML parser only as character references


def report_xml(uid: str, images=(), findings="Heart is enlarged.", impression="Cardiomegaly.") -> str:
    sections = "".join(f'<AbstractText Label="{label}">{text}</AbstractText>'
                       for label, text in (("FINDINGS", findings), ("IMPRESSION", impression)) if text)
    parents = "".join(f'<parentImage id={quoteattr(image, _CONTROL)}/>' for image in images)
    return (f'<?xml version="1.0"?><eCitation><uId id={quoteattr(uid, _CONTROL)}/><Abstract>{sections}</Abstract>'
            f"<MeSH><major>Cardiomegaly/mild</major></MeSH>{parents}</eCitation>")


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, format="PNG") if mode else Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def grey_png(seed: int, shape=(40, 30), value: int | None = None) -> bytes:
    if value is not None:
        return png_bytes(np.full(shape, value, dtype=np.uint8))
    return png_bytes(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8))


def write_inputs(root: Path, uids: list[str], image_value: int | None = None) -> tuple[Path, Path]:
    """A reports folder with one report per uid and an images folder with one frontal PNG each."""
    reports, images = root / "reports", root / "images"
    reports.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    for n, uid in enumerate(uids):
        (reports / f"{n}.xml").write_text(report_xml(uid, (f"IMG{n}",)))
        (images / f"IMG{n}.png").write_bytes(grey_png(n, value=image_value))
    return reports, images


# --- other corpora, laid out as the real ones

CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                   "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                   "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 48), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")


def write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)


def chexpert_corpus(tmp_path: Path) -> Path:
    """CheXpert-v1.0-small: 6 train patients x 2 studies (frontal + lateral), 2 valid patients."""
    root = tmp_path / "CheXpert-v1.0-small"
    rows = {"train": [], "valid": []}
    for n in range(1, 9):
        part = "train" if n <= 6 else "valid"
        for study in (1, 2) if part == "train" else (1,):
            for view, kind in (("view1_frontal", "Frontal"), ("view2_lateral", "Lateral")):
                rel = f"CheXpert-v1.0-small/{part}/patient{n:05d}/study{study}/{view}.jpg"
                write_image(tmp_path / rel, n * 10 + study)
                row = dict.fromkeys(CHEXPERT_HEADER, "")
                row.update({"Path": rel, "Sex": "Female", "Age": "60", "Frontal/Lateral": kind, "AP/PA": "AP" if kind == "Frontal" else "",
                            "Cardiomegaly": "1.0" if n % 2 else "0.0", "Edema": "-1.0" if n == 3 else "",
                            "No Finding": "1.0" if n == 2 else ""})
                rows[part].append(row)
    for part in rows:
        write_csv(root / f"{part}.csv", CHEXPERT_HEADER, rows[part])
    return tmp_path


# --- reading a pack back

def read_pack(folder: Path) -> dict[str, dict]:
    """key -> {member ('labels.json', 'meta.json', 'report.json'): parsed JSON, 'split': the shard's split}."""
    manifest = json.loads((folder / "manifest.json").read_text())
    out = {}
    for shard in manifest["shards"]:
        with tarfile.open(folder / shard["name"]) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext.endswith(".json"):
                    out.setdefault(key, {"split": shard["split"]})[ext] = json.loads(tar.extractfile(member).read())
    return out


# --- loss and local-similarity inputs

def random_model_outputs(batch=5, n_words=6, n_regions=4, dim=8, seed=0, dtype=torch.float64):
    """img_global, regions, sentence, words and a ragged word_mask (every text has >= 1 word)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, n_words + 1, (batch,), generator=g)
    return {
        "img_global": torch.randn(batch, dim, generator=g, dtype=dtype),
        "regions": torch.randn(batch, n_regions, dim, generator=g, dtype=dtype),
        "sentence": torch.randn(batch, dim, generator=g, dtype=dtype),
        "words": torch.randn(batch, n_words, dim, generator=g, dtype=dtype),
        "word_mask": torch.arange(n_words)[None, :] < lengths[:, None],
    }


def make_inputs(T, I, W, R, D, counts, dtype, holes=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    words = torch.randn(T, W, D, generator=gen)
    regions = torch.randn(I, R, D, generator=gen)
    word_mask = torch.arange(W)[None, :] < torch.tensor(counts)[:, None]
    if holes:  # real words need not be a prefix
        word_mask = word_mask[:, torch.randperm(W, generator=gen)]
    words = words.to(DEVICE, dtype)
    regions = regions.to(DEVICE, dtype)
    return words, word_mask.to(DEVICE), regions


def assert_close(actual, wanted, tol, what, shown=5):
    """`actual` within `tol` of `wanted` relative to max |wanted|, element by element; on failure
    the message says how many values are off and where, as Liger-Kernel's
    `assert_verbose_allclose` does: a value is off when its error exceeds the bound, or when it
    is NaN or infinite where `wanted` is not (a kernel's unwritten, NaN-poisoned buffer)."""
    actual = actual.detach().double().cpu()
    wanted = wanted.detach().double().cpu()
    assert actual.shape == wanted.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(wanted.shape)}"
    bound = tol * wanted.abs().max().clamp(min=1e-30).item() if wanted.numel() else 0.0
    error = (actual - wanted).abs()
    off = ~(error <= bound) & ~(actual.isnan() & wanted.isnan()) & ~((actual == wanted) & actual.isinf())
    if not off.any():
        return
    where = off.nonzero()[:shown].tolist()
    examples = "; ".join(f"{tuple(i)}: {actual[tuple(i)].item():.6g} vs {wanted[tuple(i)].item():.6g}" for i in where)
    non_finite = int((off & ~actual.isfinite()).sum())
    finite_error = error[off & actual.isfinite()]
    largest = f"{finite_error.max().item() / max(bound / tol, 1e-30):.2e}" if finite_error.numel() else "-"
    raise AssertionError(
        f"{what}: {int(off.sum())} of {off.numel()} values ({100 * off.float().mean().item():.2f} %) off by more "
        f"than {tol:.0e} of max |wanted|, {non_finite} of them NaN/inf; largest relative error {largest}; "
        f"first at {examples}")


def kill_after_some_shards(command: list[str], out: Path, shards: int, timeout: float = 60.0) -> None:
    """Run a `cmgl pack` command and SIGKILL it once `out` holds `shards` finished shards."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while len(list(out.glob("*.tar"))) < shards:
            assert process.poll() is None, "the pack finished before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 free now, for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_train_pack(folder: Path, shards: int, per_shard: int, members) -> list[str]:
    """`shards` train shards of `per_shard` samples keyed CXR<i>, each `members(i)` (a member whose
    value is None is left out), plus manifest.json; returns the shard URLs."""
    import webdataset as wds

    from cmgl_dist.data import shard_urls
    from cmgl_dist.shards.schema import MANIFEST, shard_name

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for shard in range(shards):
        name = shard_name("train", shard)
        with wds.TarWriter(str(folder / name)) as sink:
            for i in range(shard * per_shard, (shard + 1) * per_shard):
                sink.write({"__key__": f"CXR{i}", **{k: v for k, v in members(i).items() if v is not None}})
        entries.append({"name": name, "split": "train", "samples": per_shard, "sha256": "-"})
    (folder / MANIFEST).write_text(json.dumps({"shards": entries}))
    return shard_urls(str(folder), "train")
