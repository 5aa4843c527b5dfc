"""Segmentation loss: class-weighted cross-entropy plus Dice, both skipping ignored pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from kornia.losses import dice_loss
from torch import nn

from ssl_seg import IGNORE_INDEX, NUM_CLASSES


def class_weights(pixel_counts: np.ndarray, mode: str = "inverse_sqrt") -> torch.Tensor:
    """Per-class weights from labeled pixel counts, scaled to a pixel-weighted mean of 1.

    ``inverse`` gives 1/frequency (the SS2 top-10% solution's choice), ``inverse_sqrt`` the
    gentler 1/sqrt(frequency), ``none`` all ones. Classes never seen get the largest weight.

    Example:
        >>> [round(w, 2) for w in class_weights(np.array([900, 50, 40, 10]), "inverse").tolist()]
        [0.28, 5.0, 6.25, 25.0]
    """
    counts = np.asarray(pixel_counts, dtype=np.float64)
    if mode == "none":
        return torch.ones(len(counts))
    if mode not in ("inverse", "inverse_sqrt"):
        raise ValueError(f"class_weights must be inverse, inverse_sqrt or none, not '{mode}'")
    frequency = counts / max(counts.sum(), 1.0)
    seen = frequency > 0
    weights = np.zeros_like(frequency)
    weights[seen] = 1.0 / frequency[seen] if mode == "inverse" else 1.0 / np.sqrt(frequency[seen])
    weights[~seen] = weights[seen].max() if seen.any() else 1.0
    weights /= (weights * frequency).sum() if seen.any() else weights.mean()
    return torch.tensor(weights, dtype=torch.float32)


class SegmentationLoss(nn.Module):
    """``ce + dice_weight * dice``; returns the total and its parts for logging."""

    def __init__(self, weights: torch.Tensor | None = None, dice_weight: float = 0.5,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.register_buffer("weights", weights if weights is not None else torch.ones(NUM_CLASSES))
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = logits.float()
        # kornia counts an all-ignored sample as Dice 1 with no gradient: Dice leaves such samples out
        labeled = (target != self.ignore_index).flatten(1).any(dim=1)
        if not labeled.any():
            zero = logits.sum() * 0.0  # keeps the graph connected when a batch has no labels
            return zero, {"ce": zero.detach(), "dice": zero.detach()}
        ce = F.cross_entropy(logits, target, weight=self.weights, ignore_index=self.ignore_index)
        dice = (dice_loss(logits[labeled], target[labeled], average="macro", ignore_index=self.ignore_index)
                if self.dice_weight else ce * 0)
        return ce + self.dice_weight * dice, {"ce": ce.detach(), "dice": dice.detach()}


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the pixels where ``keep`` is true, divided by all pixels.

    Dividing by all pixels (as UniMatch does) lets the loss grow with the teacher's confidence:
    early in training, when few pixels pass the threshold, they do not carry the full weight.
    """
    per_pixel = F.cross_entropy(logits.float(), target, reduction="none")
    return (per_pixel * keep).sum() / keep.numel()


def pixel_weighted_loss(logits: torch.Tensor, label: torch.Tensor, keep: torch.Tensor, weights: torch.Tensor,
                        dice_weight: float) -> torch.Tensor:
    """Class-weighted cross-entropy summed over pixels weighted by ``keep`` (0 or 1, or a weight in between) and
    divided by all pixels (as UniMatch does: the loss grows with the teacher's confidence), plus Dice over the
    kept pixels (weighted likewise) averaged over the classes present: the unlabeled loss of the online methods."""
    logits = logits.float()
    ce = (F.cross_entropy(logits, label, weight=weights, reduction="none") * keep).sum() / keep.numel()
    if not dice_weight:
        return ce
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(label, probs.shape[1]).permute(0, 3, 1, 2).float()
    kept = keep.unsqueeze(1)
    intersection = (probs * onehot * kept).sum(dim=(0, 2, 3))
    truth = (onehot * kept).sum(dim=(0, 2, 3))
    union = (probs * kept).sum(dim=(0, 2, 3)) + truth
    present = truth > 0
    if not present.any():
        return ce
    dice = 1 - (2 * intersection[present] + 1e-5) / (union[present] + 1e-5)
    return ce + dice_weight * dice.mean()
