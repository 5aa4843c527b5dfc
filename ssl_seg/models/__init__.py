"""Segmentation models: one file per family, each joining the registry with a decorator.

Every model maps images in [0, 1] of shape (B, 3, H, W) to logits (B, C, H, W) through
``decode(encode(images), size)``; a new family is one file here plus its import below.

Example:
    >>> import torch
    >>> model = build_model("segformer-tiny")
    >>> model(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 4, 64, 64])
"""

from __future__ import annotations

from ssl_seg.errors import ModelLoadError
from ssl_seg.models.base import (FAMILIES, MODEL_BUILDERS, Segmenter, build_model, model_from_spec, model_spec,
                                 register_family, register_model)
from ssl_seg.models.dinov2 import Dinov2Segmenter  # noqa: F401  (registers the family)
from ssl_seg.models.segformer import SegformerSegmenter  # noqa: F401
from ssl_seg.models.unet import UNetSegmenter  # noqa: F401

MODELS = MODEL_BUILDERS  # name -> builder, the names --model takes

__all__ = ["FAMILIES", "MODELS", "ModelLoadError", "Segmenter", "build_model", "model_spec", "model_from_spec",
           "register_family", "register_model", "SegformerSegmenter", "Dinov2Segmenter", "UNetSegmenter"]
