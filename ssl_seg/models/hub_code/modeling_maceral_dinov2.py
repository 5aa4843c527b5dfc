"""DINOv2 with ssl_seg's convolutional head, loadable by transformers alone (``trust_remote_code=True``).

``ssl-seg export`` copies this file into the model folder; it imports only torch and transformers.
``ssl_seg.models.dinov2`` uses the same ``patch_grid`` and ``upsampled`` so that both compute one thing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SemanticSegmenterOutput


def patch_grid(backbone: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The last layer's patch tokens as a grid (B, hidden, ceil(H/patch), ceil(W/patch)); normalised
    ``pixels`` are padded up to whole patches by replicating their edge."""
    height, width = pixels.shape[-2:]
    patch = backbone.config.patch_size
    x = F.pad(pixels, (0, -width % patch, 0, -height % patch), mode="replicate")
    tokens = backbone(pixel_values=x).last_hidden_state
    grid_h, grid_w = x.shape[-2] // patch, x.shape[-1] // patch
    # Drop the CLS (and any register) tokens, keep the patch grid.
    return tokens[:, -grid_h * grid_w:].transpose(1, 2).reshape(x.shape[0], -1, grid_h, grid_w)


def upsampled(logits: torch.Tensor, patch: int, size: tuple[int, int]) -> torch.Tensor:
    """Patch-grid logits at the padded input's resolution, cropped to ``size``."""
    padded = (logits.shape[-2] * patch, logits.shape[-1] * patch)
    return F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)[..., :size[0], :size[1]]


def segmentation_head(width: int, num_classes: int, channels: int = 256) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(width), nn.Conv2d(width, channels, 3, padding=1), nn.BatchNorm2d(channels),
                         nn.GELU(), nn.Conv2d(channels, num_classes, 1))


class MaceralDinov2Config(PretrainedConfig):
    """``backbone_config``: the DINOv2 (or DINOv2-with-registers) config as a dict."""

    model_type = "maceral_dinov2"

    def __init__(self, backbone_config: dict | None = None, head_channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.backbone_config = backbone_config or {"model_type": "dinov2"}
        self.head_channels = head_channels


class MaceralDinov2ForSemanticSegmentation(PreTrainedModel):
    """Normalised pixels (B, 3, H, W) -> logits at full resolution (B, num_labels, H, W)."""

    config_class = MaceralDinov2Config
    main_input_name = "pixel_values"

    def __init__(self, config: MaceralDinov2Config):
        super().__init__(config)
        backbone = dict(config.backbone_config)
        self.backbone = AutoModel.from_config(AutoConfig.for_model(backbone.pop("model_type", "dinov2"), **backbone))
        self.head = segmentation_head(self.backbone.config.hidden_size, config.num_labels, config.head_channels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> SemanticSegmenterOutput:
        logits = self.head(patch_grid(self.backbone, pixel_values))
        return SemanticSegmenterOutput(logits=upsampled(logits, self.backbone.config.patch_size,
                                                        pixel_values.shape[-2:]))
