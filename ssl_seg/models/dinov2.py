"""DINOv2 ViT backbone with a light convolutional head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, Dinov2Config, PretrainedConfig

from ssl_seg.models.hub import load_pretrained
from ssl_seg.models.segformer import IMAGENET_MEAN, IMAGENET_STD


def tiny_dinov2_config() -> Dinov2Config:
    """A random DINOv2 the size of transformers' own test model, for tests and CPU smoke runs."""
    return Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=96, patch_size=8, image_size=64)


class Dinov2Segmenter(nn.Module):
    """Patch features of the last layer -> BN + 3x3 conv + 1x1 conv -> bilinear upsampling."""

    def __init__(self, backbone: nn.Module, num_classes: int, head_channels: int = 256):
        super().__init__()
        self.backbone = backbone
        # Only masked-image pretraining uses the mask token; segmentation never does.
        backbone.embeddings.mask_token.requires_grad_(False)
        width = backbone.config.hidden_size
        self.head = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Conv2d(width, head_channels, 3, padding=1),
            nn.BatchNorm2d(head_channels),
            nn.GELU(),
            nn.Conv2d(head_channels, num_classes, 1),
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def hf_config(self) -> PretrainedConfig:
        return self.backbone.config

    @property
    def num_classes(self) -> int:
        return self.head[-1].out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        patch = self.backbone.config.patch_size
        pad_h, pad_w = -height % patch, -width % patch
        x = F.pad((images - self.mean) / self.std, (0, pad_w, 0, pad_h), mode="replicate")
        tokens = self.backbone(pixel_values=x).last_hidden_state
        grid_h, grid_w = x.shape[-2] // patch, x.shape[-1] // patch
        # Drop the CLS (and any register) tokens, keep the patch grid.
        features = tokens[:, -grid_h * grid_w:].transpose(1, 2).reshape(x.shape[0], -1, grid_h, grid_w)
        logits = F.interpolate(self.head(features), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]

    def parameter_groups(self, lr: float, backbone_lr_scale: float = 0.1) -> list[dict]:
        """A lower learning rate for the pretrained backbone than for the fresh head."""
        return [
            {"params": list(self.backbone.parameters()), "lr": lr * backbone_lr_scale},
            {"params": list(self.head.parameters()), "lr": lr},
        ]

    @classmethod
    def from_config(cls, config: PretrainedConfig, num_classes: int) -> "Dinov2Segmenter":
        return cls(AutoModel.from_config(config), num_classes)

    @classmethod
    def from_pretrained(cls, name_or_dir: str, num_classes: int, local_files_only: bool = False):
        # AutoModel picks Dinov2Model or Dinov2WithRegistersModel from the config
        backbone = load_pretrained(AutoModel, name_or_dir, local_files_only=local_files_only, family="DINOv2")
        # weights saved in bf16/fp16 load in that dtype: training keeps float32 weights
        return cls(backbone.float(), num_classes)
