"""A from-scratch U-Net with batch norm and full-resolution logits: family ``unet``.

The semi-supervised anchors that train from scratch on a handful of labels (UniMatch's medical
branch, BCP) all use such a CNN; its ``encode`` returns every level's features so that a method can
perturb what the decoder sees.

Example:
    >>> import torch
    >>> model = UNetSegmenter(widths=(8, 16), num_classes=4)
    >>> model(torch.rand(2, 3, 30, 44)).shape
    torch.Size([2, 4, 30, 44])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_seg.errors import ModelLoadError
from ssl_seg.models.base import register_family, register_model

# Fixed input normalisation: no learned or dataset statistics, so that reflectance keeps its meaning.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25

SIZES = {"unet-small": (16, 32, 64, 128), "unet": (32, 64, 128, 256), "unet-large": (48, 96, 192, 384)}


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(0.01, inplace=True),
    )


@register_family("unet")
class UNetSegmenter(nn.Module):
    """Levels of two 3x3 conv + BN blocks, max-pooled down, bilinearly upsampled and concatenated back up."""

    def __init__(self, widths: tuple[int, ...] = SIZES["unet"], num_classes: int = 4):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"a U-Net needs at least 2 levels, got widths {widths}")
        self.widths, self.num_classes = tuple(int(w) for w in widths), num_classes
        self.down = nn.ModuleList(conv_block(c_in, c_out) for c_in, c_out in zip((3, *self.widths[:-1]), self.widths))
        self.up = nn.ModuleList(conv_block(deep + skip, skip)
                                for deep, skip in zip(self.widths[:0:-1], self.widths[-2::-1]))
        self.classifier = nn.Conv2d(self.widths[0], num_classes, 1)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, x = [], (images - PIXEL_MEAN) / PIXEL_STD
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2, ceil_mode=True) if i else x)
            features.append(x)
        return tuple(features)

    def decode(self, features: tuple[torch.Tensor, ...], size: tuple[int, int]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.up, features[-2::-1]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        logits = self.classifier(x)
        return logits if tuple(logits.shape[-2:]) == tuple(size) else F.interpolate(
            logits, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images), images.shape[-2:])

    def parameter_groups(self, lr: float, backbone_lr_scale: float = 0.1) -> list[dict]:
        return [{"params": list(self.parameters()), "lr": lr}]  # no pretrained part

    def spec(self) -> dict:
        return {"widths": list(self.widths), "num_classes": self.num_classes}

    @classmethod
    def from_spec(cls, spec: dict) -> "UNetSegmenter":
        return cls(tuple(spec["widths"]), spec["num_classes"])


def _builder(name: str):
    def build(num_classes: int, pretrained: str | None, local_files_only: bool) -> UNetSegmenter:
        if pretrained is not None:
            raise ModelLoadError(f"model '{name}' trains from scratch; leave out --pretrained")
        return UNetSegmenter(SIZES[name], num_classes)

    return build


for _name in SIZES:
    register_model(_name)(_builder(_name))
