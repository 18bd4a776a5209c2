"""`data.decode=gpu` run on CPU tensors (torchvision's decode_jpeg minus the device): the same
batches as the CPU path in keys, texts, shapes and value ranges, pixels within interpolation
differences, the same random views; PNG shards and a machine without CUDA refused clearly."""
import pytest
import torch

from cmgl_dist.config import DataConfig
from cmgl_dist.data import make_loader, shard_urls
from cmgl_dist.data.images import IMAGENET_MEAN, IMAGENET_STD
from cmgl_dist.shards.pack import pack

LOW, HIGH = (0 - IMAGENET_MEAN) / IMAGENET_STD, (1 - IMAGENET_MEAN) / IMAGENET_STD


@pytest.fixture(scope="module")
def tokenizer(minilm_tokenizer):
    return minilm_tokenizer


@pytest.fixture(scope="module")
def packs(tmp_path_factory, reports_tgz, metadata_csv):
    root = tmp_path_factory.mktemp("decode")
    for fmt in ("jpeg", "png"):
        pack(reports=reports_tgz, images="phantom", metadata=metadata_csv, out=root / fmt, image_size=128,
             samples_per_shard=8, seed=4, limit=32, workers=1, image_format=fmt)
    return root


def _batches(folder, tokenizer, *, train, device=None, **cfg):
    data = DataConfig(**{"image_size": 64, "crop_size": 48, "max_length": 32, "shuffle_buffer": 0, "workers": 0, **cfg})
    extra = {"batches_per_epoch": 3} if train else {}
    loader = make_loader(shard_urls(str(folder), "train"), data, tokenizer, train=train, batch_size=4, seed=1,
                         decode_device=device, **extra)
    return list(loader)


def _in_range(images: torch.Tensor) -> bool:
    return bool(((images >= LOW - 1e-5) & (images <= HIGH + 1e-5)).all())


@pytest.mark.parametrize("augment", [False, True])
def test_device_batches_match_the_cpu_path(packs, tokenizer, augment):
    train = augment
    cpu = _batches(packs / "jpeg", tokenizer, train=train, augment=augment)
    device = _batches(packs / "jpeg", tokenizer, train=train, augment=augment, decode="gpu", device="cpu")
    assert len(cpu) == len(device) > 0
    for a, b in zip(cpu, device):
        assert a["keys"] == b["keys"] and a["texts"] == b["texts"] and torch.equal(a["labels"], b["labels"])
        assert b["images"].shape == a["images"].shape == (len(a["keys"]), 3, 48, 48)
        assert b["images"].dtype == torch.float32 and _in_range(b["images"]) and _in_range(a["images"])
        # the same crops, affines and jitter; only the interpolation differs (0.1 ~ 6 grey levels of 255)
        assert (a["images"] - b["images"]).abs().mean() < 0.1
        if augment:  # the random views agree: the same images with other draws would be far off
            shifted = torch.roll(b["images"], shifts=(3, -4), dims=(-2, -1))
            assert (a["images"] - shifted).abs().mean() > 0.3
    again = _batches(packs / "jpeg", tokenizer, train=train, augment=augment, decode="gpu", device="cpu")
    assert all(torch.equal(x["images"], y["images"]) for x, y in zip(again, device))  # reproducible


def test_png_shards_and_missing_cuda_are_refused_clearly(packs, tokenizer):
    with pytest.raises(ValueError, match="data.decode=gpu decodes JPEG shards only, and sample .* is not JPEG"):
        _batches(packs / "png", tokenizer, train=False, decode="gpu", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="data.decode=gpu needs a CUDA device"):
            _batches(packs / "jpeg", tokenizer, train=False, decode="gpu")
