"""Segmentation models: one registry, one ``build_model`` factory.

Every model maps images in [0, 1] of shape (B, 3, H, W) to logits (B, C, H, W).

Example:
    >>> import torch
    >>> model = build_model("segformer-tiny")
    >>> model(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 4, 64, 64])
"""

from __future__ import annotations

import json
from typing import Callable

from torch import nn
from transformers import AutoConfig, SegformerConfig

from ssl_seg import NUM_CLASSES
from ssl_seg.models.dinov2 import Dinov2Segmenter, tiny_dinov2_config
from ssl_seg.models.hub import ModelLoadError
from ssl_seg.models.segformer import SegformerSegmenter, tiny_segformer_config


def _segformer(num_classes: int, pretrained: str | None, local_files_only: bool) -> nn.Module:
    if pretrained is None:
        raise ModelLoadError(
            "model 'segformer' needs --pretrained (a hub id such as nvidia/mit-b5 or a local folder); "
            "for a from-scratch CPU model use --model segformer-tiny"
        )
    return SegformerSegmenter.from_pretrained(pretrained, num_classes, local_files_only)


def _segformer_tiny(num_classes: int, pretrained: str | None, local_files_only: bool) -> nn.Module:
    if pretrained is not None:
        return SegformerSegmenter.from_pretrained(pretrained, num_classes, local_files_only)
    return SegformerSegmenter.from_config(tiny_segformer_config(num_classes))


def _dinov2(num_classes: int, pretrained: str | None, local_files_only: bool) -> nn.Module:
    if pretrained is None:
        raise ModelLoadError(
            "model 'dinov2' needs --pretrained (a hub id such as facebook/dinov2-base or a local folder); "
            "for a random test-sized model use --model dinov2-tiny"
        )
    return Dinov2Segmenter.from_pretrained(pretrained, num_classes, local_files_only)


def _dinov2_tiny(num_classes: int, pretrained: str | None, local_files_only: bool) -> nn.Module:
    if pretrained is not None:
        raise ModelLoadError("model 'dinov2-tiny' is a random test-sized model; with --pretrained use --model dinov2")
    return Dinov2Segmenter.from_config(tiny_dinov2_config(), num_classes)


MODELS: dict[str, Callable[[int, str | None, bool], nn.Module]] = {
    "segformer": _segformer,
    "segformer-tiny": _segformer_tiny,
    "dinov2": _dinov2,
    "dinov2-tiny": _dinov2_tiny,
}


def build_model(name: str, num_classes: int = NUM_CLASSES, pretrained: str | None = None,
                local_files_only: bool = False) -> nn.Module:
    """Build a registered model; ``pretrained`` is a hub id or a local ``save_pretrained`` folder."""
    if name not in MODELS:
        raise ModelLoadError(f"unknown model '{name}'; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, pretrained, local_files_only)


def model_spec(model: nn.Module) -> dict:
    """What a checkpoint needs to rebuild ``model`` offline: its family and config as JSON text."""
    family = "dinov2" if isinstance(model, Dinov2Segmenter) else "segformer"
    return {"family": family, "hf_config": model.hf_config.to_json_string(use_diff=False),
            "num_classes": model.num_classes}


def model_from_spec(spec: dict) -> nn.Module:
    """Rebuild an untrained model of the same shape as the one ``spec`` describes (no download)."""
    config = json.loads(spec["hf_config"])
    if spec["family"] == "dinov2":
        # the config's own model_type: DINOv2 with registers rebuilds with its register tokens
        return Dinov2Segmenter.from_config(AutoConfig.for_model(config.pop("model_type", "dinov2"), **config),
                                           spec["num_classes"])
    return SegformerSegmenter.from_config(SegformerConfig.from_dict(config))


__all__ = ["MODELS", "ModelLoadError", "build_model", "model_spec", "model_from_spec",
           "SegformerSegmenter", "Dinov2Segmenter"]
