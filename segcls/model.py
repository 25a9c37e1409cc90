"""The paper's network (Ciga & Martel 2021), top to bottom.

ResNet-18 encoder up to layer3 (stride 16) -> decoder (3x3 conv 256->64, BN, ReLU, bilinear x2,
1x1 conv 64->C) = low-resolution logits at stride 8 -> classification layer = global max pool of those
logits (no parameters). Full-resolution logits are a nearest upsampling of the stride-8 logits.

Encoder parameter names are torchvision's resnet18 names, so ImageNet weights load as they are
(segcls.pretrained reads them and other layouts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from segcls.pretrained import load_encoder


@dataclass
class ModelConfig:
    num_classes: int
    decoder_channels: int = 64


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (same attribute names)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Encoder(nn.Module):
    """ResNet-18 to layer3: 256 channels at stride 16. layer4 and fc are not part of the network."""

    out_channels = 256
    stride = 16

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


class Decoder(nn.Module):
    """256 ch at stride 16 -> C logits at stride 8."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 64) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(features)))
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.classifier(x)


def classification_layer(low_res_logits: torch.Tensor) -> torch.Tensor:
    """The paper's parameter-free classifier: global max pool of the segmentation logits."""
    return torch.amax(low_res_logits, dim=(2, 3))


class SegClsOutput(NamedTuple):
    low_res_logits: torch.Tensor  # (B, C, H/8, W/8)
    class_scores: torch.Tensor  # (B, C)
    logits: torch.Tensor | None  # (B, C, H, W) nearest upsampling; None when not asked for


class SegClsNet(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ResNet18Encoder()
        self.decoder = Decoder(self.encoder.out_channels, config.num_classes, config.decoder_channels)

    def forward(self, x: torch.Tensor, full_res: bool = True) -> SegClsOutput:
        low = self.decoder(self.encoder(x))
        logits = F.interpolate(low, size=x.shape[-2:], mode="nearest") if full_res else None
        return SegClsOutput(low, classification_layer(low), logits)


def build_model(num_classes: int, pretrained: str | Path | None = None) -> SegClsNet:
    """The network; `pretrained` (a file, URL or `imagenet`: segcls.pretrained) initialises the encoder."""
    model = SegClsNet(ModelConfig(num_classes=num_classes))
    if pretrained is not None:
        load_encoder(model.encoder, pretrained, progress=False)
    return model
