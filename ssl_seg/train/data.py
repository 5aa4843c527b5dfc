"""What a run trains and validates on: the labeled split, the unlabeled images, and their crop loaders."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from ssl_seg import IGNORE_INDEX, NUM_CLASSES, class_code
from ssl_seg.config import TrainConfig
from ssl_seg.data.dataset import CropDataset, DrawSampler
from ssl_seg.data.layout import DatasetIndex, Sample, discover, validate, why_no_labeled
from ssl_seg.data.pseudo_labels import pseudo_samples
from ssl_seg.errors import DataError, TrainError
from ssl_seg.runtime import worker_signals

# Below this many validation images best.pth is picked by noise; the run says so.
FEW_VALIDATION_IMAGES = 3


def split_validation(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded split; at least one validation image once there are two or more."""
    if fraction <= 0 or len(samples) < 2:
        return samples, []
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = max(1, round(fraction * len(samples)))
    val = {int(i) for i in order[:n_val]}
    return [s for i, s in enumerate(samples) if i not in val], [s for i, s in enumerate(samples) if i in val]


def batch_split(batch_size: int, labeled_ratio: float) -> tuple[int, int]:
    """(labeled, unlabeled) crops per step; a ratio strictly between 0 and 1 keeps at least one of each.

    >>> batch_split(8, 0.25), batch_split(2, 0.25), batch_split(4, 0.9), batch_split(4, 0.0)
    ((2, 6), (1, 1), (3, 1), (0, 4))
    """
    if not 0.0 <= labeled_ratio <= 1.0:
        raise TrainError(f"labeled_ratio must lie in [0, 1], got {labeled_ratio}")
    if labeled_ratio in (0.0, 1.0):
        return (batch_size, 0) if labeled_ratio else (0, batch_size)
    if batch_size < 2:
        raise TrainError(f"batch_size {batch_size} cannot mix labeled and unlabeled crops; "
                         "use a batch size of at least 2, or labeled_ratio 0 or 1")
    n_labeled = min(batch_size - 1, max(1, round(batch_size * labeled_ratio)))
    return n_labeled, batch_size - n_labeled


@dataclass
class TrainingSets:
    index: DatasetIndex
    labeled: list[Sample]
    val: list[Sample]
    unlabeled: list[Sample]

    def pixel_counts(self) -> np.ndarray:
        """Labeled pixels per class: the class weights of the loss."""
        counts = np.zeros(NUM_CLASSES, np.int64)
        for sample in self.labeled:
            mask = sample.read_mask()
            counts += np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
        return counts


def _labeled_and_val(cfg: TrainConfig, data: str | Path, index: DatasetIndex, binary: int | None):
    labeled, val = split_validation(index.labeled, cfg.val_fraction, cfg.seed)
    if cfg.val_dir:
        try:
            val_index = discover(cfg.val_dir, binary_class=binary)
            validate(val_index)
        except DataError as exc:
            raise DataError(f"--val-dir {cfg.val_dir}: {exc}") from None
        labeled, val = index.labeled, val_index.labeled
        if not val:
            raise TrainError(f"--val-dir {cfg.val_dir} has no labeled images (image + mask pairs) to validate on; "
                             "point it at a labeled dataset, or leave it out to validate on a split of --data")
    if not labeled and index.labeled:
        raise TrainError(f"val_fraction {cfg.val_fraction} leaves none of the {len(index.labeled)} labeled images of "
                         f"{data} to train on; lower it with --set val_fraction=0.1 (or 0: no validation)")
    if not labeled:
        raise TrainError(f"{data} has no labeled images to train on: {why_no_labeled(index)}")
    return labeled, val


def training_sets(cfg: TrainConfig, data: str | Path, mode: str, say: bool) -> TrainingSets:
    """The run's images, checked before it starts; ``say`` prints what it trains and validates on."""
    binary = class_code(cfg.binary_class) if cfg.binary_class else None
    index = discover(data, binary_class=binary)
    validate(index)
    labeled, val = _labeled_and_val(cfg, data, index, binary)
    unlabeled = []
    if mode == "pretrain" and cfg.pseudo_labels:
        unlabeled = pseudo_samples(Path(cfg.pseudo_labels))
    elif mode == "pretrain" and index.unlabeled:  # online only: all-ignore targets, the method's losses alone
        truths = Path(data) / "train" / "unlabeled_truth"  # written by `ssl-seg synth`: diagnostics only
        unlabeled = [Sample(id=path.stem, image=path, truth=truth if (truth := truths / f"{path.stem}_gt.npy").is_file()
                            else None) for path in index.unlabeled]
    elif mode == "pretrain":
        raise TrainError(f"{data} has no unlabeled images; pass --pseudo-labels DIR (the output of "
                         "`ssl-seg pseudo-label`) or add images to its unlabeled folder")
    if say:
        pseudo = f", {len(unlabeled)} unlabeled" + (" with pseudo-labels" if cfg.pseudo_labels else "")
        print(f"ssl-seg {mode}: {index.summary()}; training on {len(labeled)} labeled"
              f"{pseudo if mode == 'pretrain' else ''}, validating on {len(val)}"
              + (f" from {cfg.val_dir}" if cfg.val_dir else "")
              + ("" if val else " (so best.pth holds the last saved step, not the best one)"), file=sys.stderr)
        if 0 < len(val) < FEW_VALIDATION_IMAGES:
            print(f"ssl-seg {mode}: validating on {len(val)} image(s) picks best.pth by chance; pass --val-dir "
                  "with more labeled images, or compare settings by k-fold cross-validation", file=sys.stderr)
    return TrainingSets(index, labeled, val, unlabeled)


def crop_batches(samples: list[Sample], cfg: TrainConfig, per_step: int, start_step: int, pseudo: bool,
                 rank: int, world: int, pin_memory: bool, released):
    """An iterator of ``per_step`` random crops per step from ``start_step`` on: the same crops wherever a
    run resumes. Decoded images stay in memory for small sets only (8,641 SS2 images would not fit)."""
    dataset = CropDataset(samples, cfg.tile_size, seed=cfg.seed + (7919 if pseudo else 0), pseudo=pseudo,
                          cache=len(samples) <= 512)
    sampler = DrawSampler(start_step * per_step * world, (cfg.steps - start_step) * per_step * world, rank, world)
    return iter(DataLoader(dataset, batch_size=per_step, sampler=sampler, num_workers=cfg.num_workers,
                           pin_memory=pin_memory, persistent_workers=False, drop_last=True,
                           worker_init_fn=functools.partial(worker_signals, released)))
