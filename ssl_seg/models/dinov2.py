"""DINOv2 ViT backbone with a light convolutional head: family ``dinov2``."""

from __future__ import annotations

import json

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, Dinov2Config, PretrainedConfig

from ssl_seg.errors import ModelLoadError
from ssl_seg.models.base import encoder_parameter_groups, register_family, register_model
from ssl_seg.models.hub import load_pretrained
from ssl_seg.models.hub_code.modeling_maceral_dinov2 import patch_grid, segmentation_head, upsampled
from ssl_seg.models.segformer import IMAGENET_MEAN, IMAGENET_STD


def tiny_dinov2_config() -> Dinov2Config:
    """A random DINOv2 the size of transformers' own test model, for tests and CPU smoke runs."""
    return Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=96, patch_size=8, image_size=64)


@register_family("dinov2")
class Dinov2Segmenter(nn.Module):
    """Patch features of the last layer -> BN + 3x3 conv + 1x1 conv -> bilinear upsampling."""

    def __init__(self, backbone: nn.Module, num_classes: int, head_channels: int = 256):
        super().__init__()
        self.backbone = backbone
        # Only masked-image pretraining uses the mask token; segmentation never does.
        backbone.embeddings.mask_token.requires_grad_(False)
        self.head = segmentation_head(backbone.config.hidden_size, num_classes, head_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def hf_config(self) -> PretrainedConfig:
        return self.backbone.config

    @property
    def num_classes(self) -> int:
        return self.head[-1].out_channels

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The patch grid of the last layer (B, hidden, ceil(H/patch), ceil(W/patch)); images are padded up."""
        return patch_grid(self.backbone, (images - self.mean) / self.std)

    def decode(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return upsampled(self.head(features), self.backbone.config.patch_size, size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images), images.shape[-2:])

    def parameter_groups(self, lr: float, backbone_lr_scale: float = 0.1) -> list[dict]:
        """A lower learning rate for the pretrained backbone than for the fresh head."""
        return encoder_parameter_groups(self, self.backbone, lr, backbone_lr_scale)

    def spec(self) -> dict:
        return {"hf_config": self.hf_config.to_json_string(use_diff=False), "num_classes": self.num_classes}

    @classmethod
    def from_spec(cls, spec: dict) -> "Dinov2Segmenter":
        config = json.loads(spec["hf_config"])
        # the config's own model_type: DINOv2 with registers rebuilds with its register tokens
        return cls.from_config(AutoConfig.for_model(config.pop("model_type", "dinov2"), **config), spec["num_classes"])

    @classmethod
    def from_config(cls, config: PretrainedConfig, num_classes: int) -> "Dinov2Segmenter":
        return cls(AutoModel.from_config(config), num_classes)

    @classmethod
    def from_pretrained(cls, name_or_dir: str, num_classes: int, local_files_only: bool = False):
        # AutoModel picks Dinov2Model or Dinov2WithRegistersModel from the config
        backbone = load_pretrained(AutoModel, name_or_dir, local_files_only=local_files_only, family="DINOv2")
        # weights saved in bf16/fp16 load in that dtype: training keeps float32 weights
        return cls(backbone.float(), num_classes)


@register_model("dinov2")
def dinov2(num_classes: int, pretrained: str | None, local_files_only: bool) -> Dinov2Segmenter:
    if pretrained is None:
        raise ModelLoadError(
            "model 'dinov2' needs --pretrained (a hub id such as facebook/dinov2-base or a local folder); "
            "for a random test-sized model use --model dinov2-tiny"
        )
    return Dinov2Segmenter.from_pretrained(pretrained, num_classes, local_files_only)


@register_model("dinov2-tiny")
def dinov2_tiny(num_classes: int, pretrained: str | None, local_files_only: bool) -> Dinov2Segmenter:
    if pretrained is not None:
        raise ModelLoadError("model 'dinov2-tiny' is a random test-sized model; with --pretrained use --model dinov2")
    return Dinov2Segmenter.from_config(tiny_dinov2_config(), num_classes)
