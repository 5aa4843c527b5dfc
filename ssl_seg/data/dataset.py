"""Random-crop training dataset indexed by a global draw counter, and its DDP sampler.

Item ``k`` is a pure function of ``(seed, k)``: draw ``k`` belongs to epoch ``k // n``, takes
sample ``perm_e[k % n]`` of that epoch's permutation, and crops with ``default_rng([seed, k])``.
Training resumes exactly by continuing the counter; DDP ranks take interleaved draws.

>>> dataset = CropDataset(index.labeled, crop_size=512, seed=0)              # doctest: +SKIP
>>> loader = DataLoader(dataset, batch_size=8, sampler=DrawSampler(start=step * 8, count=1000 * 8))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ssl_seg import IGNORE_INDEX
from ssl_seg.data.io import DataError, read_image, read_mask
from ssl_seg.data.layout import Sample
from ssl_seg.data.tiling import random_crop

# Separates the permutation stream from the crop streams (which are seeded by [seed, k]).
_PERMUTATION_STREAM = 0x5EED


class CropDataset(Dataset):
    """Random ``crop_size`` crops of ``samples``; samples without a mask give an all-ignore mask.

    Each item holds ``image`` (3,S,S uint8), ``mask`` (S,S long) and ``valid`` (S,S uint8: 0 on the
    padding of images smaller than the crop, where no prediction should be learned).

    ``pseudo=True`` reads masks as pseudo-label maps (class codes + 255, no binary heuristic).
    ``cache=True`` keeps decoded images and masks in a per-process dict (each DataLoader
    worker fills its own), which trades memory for decode time.
    """

    def __init__(
        self, samples: list[Sample], crop_size: int, seed: int = 0, cache: bool = True, pseudo: bool = False
    ) -> None:
        if not samples:
            raise ValueError("CropDataset: no samples given")
        if crop_size < 1:
            raise ValueError(f"CropDataset: crop_size must be positive, got {crop_size}")
        self.samples = list(samples)
        self.crop_size = crop_size
        self.seed = seed
        self.cache = cache
        self.pseudo = pseudo
        self.with_truth = any(s.truth is not None for s in self.samples)
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._truths: dict[int, np.ndarray] = {}
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def permutation(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch``, a function of (seed, epoch) only."""
        order = self._permutations.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, epoch, _PERMUTATION_STREAM]).permutation(len(self.samples))
            if len(self._permutations) > 4:  # draws move forward: old epochs are done with
                self._permutations.clear()
            self._permutations[epoch] = order
        return order

    def sample_index(self, k: int) -> int:
        """Which entry of ``samples`` draw ``k`` uses."""
        epoch, position = divmod(k, len(self.samples))
        return int(self.permutation(epoch)[position])

    def _load(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        cached = self._decoded.get(position)
        if cached is not None:
            return cached
        sample = self.samples[position]
        image = read_image(sample.image)
        if sample.mask is None:
            mask = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        else:
            mask = read_mask(sample.mask, None if self.pseudo else sample.binary_class, pseudo=self.pseudo)
            if mask.shape != image.shape[:2]:
                raise DataError(
                    f"mask {sample.mask}: size {mask.shape[0]}x{mask.shape[1]} but image {sample.image} is "
                    f"{image.shape[0]}x{image.shape[1]}; fix: give the mask the image's size"
                )
        if self.cache:
            self._decoded[position] = (image, mask)
        return image, mask

    def __getitem__(self, k: int) -> dict[str, torch.Tensor | int]:
        k = int(k)
        if k < 0:
            raise IndexError(f"CropDataset: draw index must be non-negative, got {k}")
        image, mask = self._load(self.sample_index(k))
        image_crop, mask_crop = random_crop(image, mask, self.crop_size, np.random.default_rng([self.seed, k]))
        assert mask_crop is not None
        if min(image.shape[:2]) < self.crop_size:  # the same draw on a map of ones: 0 on the padding
            valid, _ = random_crop(np.ones(image.shape[:2], np.uint8), None, self.crop_size,
                                   np.random.default_rng([self.seed, k]))
        else:
            valid = np.ones((self.crop_size, self.crop_size), np.uint8)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image_crop.transpose(2, 0, 1))),
            "mask": torch.from_numpy(mask_crop.astype(np.int64)),
            "valid": torch.from_numpy(np.ascontiguousarray(valid)),
            "index": k,
        }
        if self.with_truth:  # the same crop of the true mask, for the methods' pseudo-label diagnostics
            _, truth_crop = random_crop(image, self._truth(self.sample_index(k), image.shape[:2]), self.crop_size,
                                        np.random.default_rng([self.seed, k]))
            item["truth"] = torch.from_numpy(truth_crop.astype(np.int64))
        return item

    def _truth(self, position: int, shape: tuple[int, int]) -> np.ndarray:
        truth = self._truths.get(position)
        if truth is None:
            sample = self.samples[position]
            truth = (read_mask(sample.truth) if sample.truth is not None
                     else np.full(shape, IGNORE_INDEX, dtype=np.uint8))
            if self.cache:
                self._truths[position] = truth
        return truth


class DrawSampler(Sampler[int]):
    """Yields draws ``start + rank + i * world_size`` below ``start + count``.

    Across ranks the draws ``[start, start + count)`` are covered exactly once.

    >>> list(DrawSampler(10, 5, rank=1, world_size=2))
    [11, 13]
    """

    def __init__(self, start: int, count: int, rank: int = 0, world_size: int = 1) -> None:
        if start < 0 or count < 0:
            raise ValueError(f"DrawSampler: start ({start}) and count ({count}) must be non-negative")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"DrawSampler: need 0 <= rank ({rank}) < world_size ({world_size})")
        self.start = start
        self.count = count
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start + self.rank, self.start + self.count, self.world_size))

    def __len__(self) -> int:
        return len(range(self.start + self.rank, self.start + self.count, self.world_size))
