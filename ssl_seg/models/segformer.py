"""SegFormer (Mix Transformer encoder + all-MLP decoder) from transformers: family ``segformer``."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from ssl_seg.errors import ModelLoadError
from ssl_seg.models.base import register_family, register_model
from ssl_seg.models.hub import load_pretrained

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tiny_segformer_config(num_classes: int) -> SegformerConfig:
    """A from-scratch SegFormer small enough to train on 2 CPU cores (about 0.9 M parameters)."""
    return SegformerConfig(
        num_labels=num_classes,
        depths=[1, 1, 2, 1],
        hidden_sizes=[24, 48, 96, 160],
        num_attention_heads=[1, 2, 4, 5],
        decoder_hidden_size=96,
        drop_path_rate=0.0,
        semantic_loss_ignore_index=255,
    )


@register_family("segformer")
class SegformerSegmenter(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> logits at full resolution (B, C, H, W); the features are the
    encoder's four stages (strides 4 to 32)."""

    def __init__(self, model: SegformerForSemanticSegmentation):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def hf_config(self) -> SegformerConfig:
        return self.model.config

    @property
    def num_classes(self) -> int:
        return self.model.config.num_labels

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pixels = (images - self.mean) / self.std
        return tuple(self.model.segformer(pixel_values=pixels, output_hidden_states=True).hidden_states)

    def decode(self, features: tuple[torch.Tensor, ...], size: tuple[int, int]) -> torch.Tensor:
        logits = self.model.decode_head(features)  # (B, C, H/4, W/4)
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images), images.shape[-2:])

    def parameter_groups(self, lr: float, backbone_lr_scale: float = 0.1) -> list[dict]:
        """One learning rate for encoder and head, as SegFormer's own fine-tuning recipe has it (and as the
        optimizer states of earlier checkpoints hold)."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def spec(self) -> dict:
        return {"hf_config": self.hf_config.to_json_string(use_diff=False), "num_classes": self.num_classes}

    @classmethod
    def from_spec(cls, spec: dict) -> "SegformerSegmenter":
        return cls.from_config(SegformerConfig.from_dict(json.loads(spec["hf_config"])))

    @classmethod
    def from_config(cls, config: SegformerConfig) -> "SegformerSegmenter":
        return cls(SegformerForSemanticSegmentation(config))

    @classmethod
    def from_pretrained(cls, name_or_dir: str, num_classes: int, local_files_only: bool = False):
        # nvidia/mit-b* are encoder-only checkpoints: the decode head starts random.
        model = load_pretrained(
            SegformerForSemanticSegmentation, name_or_dir, local_files_only=local_files_only,
            num_labels=num_classes, ignore_mismatched_sizes=True, family="SegFormer",
        )
        return cls(model.float())  # weights saved in bf16/fp16 load in that dtype: training keeps float32


@register_model("segformer")
def segformer(num_classes: int, pretrained: str | None, local_files_only: bool) -> SegformerSegmenter:
    if pretrained is None:
        raise ModelLoadError(
            "model 'segformer' needs --pretrained (a hub id such as nvidia/mit-b5 or a local folder); "
            "for a from-scratch CPU model use --model segformer-tiny"
        )
    return SegformerSegmenter.from_pretrained(pretrained, num_classes, local_files_only)


@register_model("segformer-tiny")
def segformer_tiny(num_classes: int, pretrained: str | None, local_files_only: bool) -> SegformerSegmenter:
    if pretrained is not None:
        return SegformerSegmenter.from_pretrained(pretrained, num_classes, local_files_only)
    return SegformerSegmenter.from_config(tiny_segformer_config(num_classes))
