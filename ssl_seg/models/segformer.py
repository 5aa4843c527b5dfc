"""SegFormer (Mix Transformer encoder + all-MLP decoder) from transformers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation

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


class SegformerSegmenter(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> logits at full resolution (B, C, H, W)."""

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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixel_values=(images - self.mean) / self.std).logits  # (B, C, H/4, W/4)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

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
