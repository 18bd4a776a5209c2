"""`data.decode=gpu`: JPEG shards decoded and augmented on the device, a batch at a time.

The loader's workers do only the cheap part (parse, the view's random draws, text); the batch
carries the JPEG bytes and the draws, and the main process decodes the whole batch with
`torchvision.io.decode_jpeg(device=...)` (nvJPEG on CUDA), then resizes, pads, crops, applies the
affine and the jitter, and normalises on the device. The draws come from the same per-sample
RNG as the CPU path (`images.draw_view`), so a resumed run gets the same views; the pixels differ
from the CPU path's by interpolation only (device bilinear against Pillow's; no DCT-domain draft).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from cmgl_dist.data.images import IMAGENET_MEAN, IMAGENET_STD, View, affine_coefficients, jitter

JPEG_MAGIC = b"\xff\xd8\xff"


def require_jpeg(key: str, data: bytes) -> None:
    if not data.startswith(JPEG_MAGIC):
        raise ValueError(f"data.decode=gpu decodes JPEG shards only, and sample {key} is not JPEG: pack with "
                         "`cmgl pack --format jpeg`, or set data.decode=cpu")


def decode_batch(jpegs: Sequence[bytes], device: torch.device | str) -> list[torch.Tensor]:
    """Grey uint8 [1, H, W] per image, decoded on `device` in one call."""
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in jpegs]
    return decode_jpeg(tensors, mode=ImageReadMode.GRAY, device=device)


def square(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """float [1, S, S] in [0, 1]: longest side to S (aspect kept, as `images.square_resize`), centred on zeros."""
    height, width = image.shape[-2:]
    scale = image_size / max(width, height)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = F.interpolate(image[None].float() / 255.0, size=(new_h, new_w), mode="bilinear",
                            align_corners=False, antialias=True)[0]
    top, left = (image_size - new_h) // 2, (image_size - new_w) // 2
    return F.pad(resized, (left, image_size - new_w - left, top, image_size - new_h - top))


def _grids(views: Sequence[View], size: int, crop_size: int, device) -> torch.Tensor:
    """grid_sample grids [B, C, C, 2] for each view's crop + affine (pixel centres at +0.5)."""
    coefficients = torch.tensor([affine_coefficients(crop_size, (v.left, v.top), v.angle, (v.shift_x, v.shift_y),
                                                     v.scale) for v in views], dtype=torch.float32, device=device)
    centres = torch.arange(crop_size, dtype=torch.float32, device=device) + 0.5
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    a, b, c, d, e, f = coefficients.unbind(1)
    src_x = a[:, None, None] * x + b[:, None, None] * y + c[:, None, None]
    src_y = d[:, None, None] * x + e[:, None, None] * y + f[:, None, None]
    return torch.stack((src_x, src_y), dim=-1) * (2.0 / size) - 1.0


def views_on_device(jpegs: Sequence[bytes], views: Optional[Sequence[View]], image_size: int, crop_size: int,
                    device: torch.device | str) -> torch.Tensor:
    """[B, 3, C, C] normalised views: the training crops/affines/jitter of `views`, or centred crops (None)."""
    squares = torch.stack([square(image, image_size) for image in decode_batch(jpegs, device)])
    if views is None:
        offset = (image_size - crop_size) // 2
        crops = squares[..., offset:offset + crop_size, offset:offset + crop_size]
    else:
        crops = F.grid_sample(squares, _grids(views, image_size, crop_size, squares.device), mode="bilinear",
                              padding_mode="zeros", align_corners=False)
        factors = torch.tensor([(v.brightness, v.contrast) for v in views], device=squares.device)
        crops = jitter(crops, factors[:, 0, None, None, None], factors[:, 1, None, None, None])
    mean, std = IMAGENET_MEAN.to(squares.device), IMAGENET_STD.to(squares.device)
    return (crops - mean) / std
