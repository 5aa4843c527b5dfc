"""Reading folders of images ahead of the model: decoding in DataLoader workers, and telling copies apart."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_seg.data.io import read_image


class ImageFolder(Dataset):
    """Decodes images in DataLoader workers, off the main thread."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        return i, read_image(self.paths[i])


def decoded_images(paths: list[Path], workers: int = 2):
    """Yields (path, uint8 HxWx3 image) in order, decoding ahead in background workers."""
    loader = DataLoader(ImageFolder(paths), batch_size=None, num_workers=workers,
                        prefetch_factor=4 if workers else None)
    for i, image in loader:
        yield paths[i], image.numpy() if isinstance(image, torch.Tensor) else image


def same_image(recorded: Path, path: Path) -> bool:
    """Whether ``path`` is the image recorded earlier under its id: the same file, or a copy of it. One that is
    gone (a moved folder) is not compared."""
    return not recorded.is_file() or os.path.samefile(recorded, path) or filecmp.cmp(recorded, path, shallow=False)
