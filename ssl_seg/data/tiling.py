"""Tiles: sliding-window inference with seamless blending, and random training crops.

>>> logits = sliding_window(model, images, tile=512, overlap=0.25)   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ssl_seg import IGNORE_INDEX

# Lowest blending weight at a tile's edge: positive so every pixel has weight, small so
# edge pixels (least context) count little wherever another tile covers them.
_MIN_WEIGHT = 1e-3


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``; the last tile ends flush with ``length``.

    >>> tile_origins(10, 4, 3)
    [0, 3, 6]
    >>> tile_origins(3, 4, 3)
    [0]
    """
    if tile < 1 or stride < 1:
        raise ValueError(f"tile ({tile}) and stride ({stride}) must be positive")
    if length <= tile:
        return [0]
    origins = list(range(0, length - tile, stride))
    origins.append(length - tile)
    return origins


def _blend_window(tile: int, device: torch.device) -> torch.Tensor:
    """(tile, tile) smooth positive weights peaking at the centre (sine bump, floored)."""
    positions = (torch.arange(tile, device=device, dtype=torch.float32) + 0.5) / tile
    ramp = torch.sin(math.pi * positions).clamp_min(_MIN_WEIGHT)
    return ramp[:, None] * ramp[None, :]


def _pad_to(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad bottom/right up to (height, width): reflect when the image is big enough, else replicate."""
    pad_h = height - images.shape[-2]
    pad_w = width - images.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return images
    mode = "reflect" if pad_h < images.shape[-2] and pad_w < images.shape[-1] else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)


def sliding_window(
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    tile: int,
    overlap: float = 0.25,
    batch_size: int = 8,
) -> torch.Tensor:
    """Run ``predict_fn`` over overlapping tiles and blend the outputs back into full images.

    ``images`` (B,3,H,W) float; ``predict_fn`` maps (N,3,tile,tile) -> (N,C,tile,tile).
    Returns (B,C,H,W) float32 on the input's device: the weighted mean of the tile outputs
    covering each pixel, with a smooth window so there are no seams. Images smaller than the
    tile are padded and cropped back. Tiles of all images are batched together. Gradients
    are whatever the caller's context allows (wrap in ``torch.inference_mode()`` to save memory).
    """
    if images.ndim != 4:
        raise ValueError(f"sliding_window: expected images (B,C,H,W), got shape {tuple(images.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"sliding_window: overlap must be in [0, 1), got {overlap}")
    batch, _, height, width = images.shape
    padded = _pad_to(images, max(height, tile), max(width, tile))
    padded_h, padded_w = padded.shape[-2:]
    stride = max(1, int(round(tile * (1.0 - overlap))))
    tiles = [
        (b, y, x)
        for b in range(batch)
        for y in tile_origins(padded_h, tile, stride)
        for x in tile_origins(padded_w, tile, stride)
    ]
    window = _blend_window(tile, images.device)
    weight_sum = torch.zeros((padded_h, padded_w), device=images.device, dtype=torch.float32)
    for _, y, x in tiles[: len(tiles) // batch]:  # same grid for every image
        weight_sum[y : y + tile, x : x + tile] += window

    blended: torch.Tensor | None = None
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        crops = torch.stack([padded[b, :, y : y + tile, x : x + tile] for b, y, x in chunk])
        outputs = predict_fn(crops)
        if outputs.ndim != 4 or outputs.shape[0] != len(chunk) or outputs.shape[-2:] != (tile, tile):
            raise ValueError(
                f"sliding_window: predict_fn returned shape {tuple(outputs.shape)} for input {tuple(crops.shape)}; "
                "expected (N, C, tile, tile)"
            )
        if blended is None:
            blended = torch.zeros((batch, outputs.shape[1], padded_h, padded_w), device=images.device,
                                  dtype=torch.float32)
        weighted = outputs.float() * window
        for (b, y, x), output in zip(chunk, weighted):
            blended[b, :, y : y + tile, x : x + tile] += output
    assert blended is not None  # at least one tile per image
    return (blended / weight_sum)[:, :, :height, :width]


def random_crop(
    image: np.ndarray, mask: np.ndarray | None, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """A random ``size`` x ``size`` crop of an HxW(xC) image and its HxW mask.

    Where the image is smaller than ``size`` it is padded on the bottom/right: image with 0,
    mask with IGNORE_INDEX (so padding never counts as background).
    """
    height, width = image.shape[:2]
    if mask is not None and mask.shape[:2] != (height, width):
        raise ValueError(f"random_crop: image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h or pad_w:
        image_pad = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (image.ndim - 2)
        image = np.pad(image, image_pad, constant_values=0)
        if mask is not None:
            mask = np.pad(mask, [(0, pad_h), (0, pad_w)], constant_values=IGNORE_INDEX)
        height, width = image.shape[:2]
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    image_crop = image[top : top + size, left : left + size]
    mask_crop = None if mask is None else mask[top : top + size, left : left + size]
    return image_crop, mask_crop
