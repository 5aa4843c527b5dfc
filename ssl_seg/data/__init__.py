"""Data layer: image/mask IO, dataset layout discovery, tiling and crop datasets.

``ssl_seg.data.synthetic`` (procedural scenes) is imported from its own module, not re-exported here.
"""

from ssl_seg.data.dataset import CropDataset, DrawSampler
from ssl_seg.data.io import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    DataError,
    atomic_write,
    colorize,
    image_size,
    overlay,
    read_image,
    read_mask,
    read_prediction,
    save_jpg,
    save_json,
    save_npy,
    save_png,
)
from ssl_seg.data.layout import DatasetIndex, Sample, discover, list_images, read_binary_classes, validate
from ssl_seg.data.tiling import random_crop, sliding_window, tile_origins

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "CropDataset",
    "DataError",
    "DatasetIndex",
    "DrawSampler",
    "Sample",
    "atomic_write",
    "colorize",
    "discover",
    "image_size",
    "list_images",
    "overlay",
    "random_crop",
    "read_binary_classes",
    "read_image",
    "read_mask",
    "read_prediction",
    "save_jpg",
    "save_json",
    "save_npy",
    "save_png",
    "sliding_window",
    "tile_origins",
    "validate",
]
