"""The parts of a step that every method shares: its context and its timer."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from ssl_seg import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from ssl_seg.augment import TrainAugment
from ssl_seg.config import TrainConfig
from ssl_seg.inference import autocast_for
from ssl_seg.metrics import confusion_matrix, micro_jaccard
from ssl_seg.train.losses import SegmentationLoss


@dataclass
class StepTimer:
    """Seconds per named part of a step (``time/<part>_s_per_step``), synchronised on CUDA."""

    device: torch.device
    seconds: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, part: str):
        tick = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - tick

    def reset(self) -> dict:
        seconds, self.seconds = self.seconds, dict.fromkeys(self.seconds, 0.0)
        return seconds


@dataclass
class StepContext:
    """What every method reads: the run's settings and the loop's shared parts."""

    cfg: TrainConfig
    device: torch.device
    augment: TrainAugment
    criterion: SegmentationLoss
    timer: StepTimer
    n_labeled: int

    def autocast(self):
        return autocast_for(self.device, self.cfg.amp)

    def ramp(self, step: int) -> float:
        """Sigmoid ramp-up of the unlabeled losses over the first ``rampup_fraction`` of the steps (Laine &
        Aila): a teacher that knows nothing yet teaches little."""
        length = self.cfg.rampup_fraction * self.cfg.steps
        if length <= 0 or step >= length:
            return 1.0
        return float(torch.exp(torch.tensor(-5.0 * (1.0 - step / length) ** 2)))


MACERALS = list(range(1, NUM_CLASSES))


def pseudo_label_quality(label: torch.Tensor, confidence_keep: torch.Tensor, inside: torch.Tensor,
                         truth: torch.Tensor) -> dict:
    """How good the online pseudo-labels are, where the true masks are known (procedural data): the maceral
    micro Jaccard of the teacher's labels against the truth on every pixel (``pseudo_jaccard``) and on the
    confident pixels it teaches (``pseudo_jaccard_kept``)."""
    scores = {}
    for name, where in (("pseudo_jaccard", inside > 0), ("pseudo_jaccard_kept", (confidence_keep > 0) & (inside > 0))):
        known = where & (truth != IGNORE_INDEX)
        if ((truth[known] > 0) | (label[known] > 0)).any():  # else no maceral to score
            scores[name] = micro_jaccard(confusion_matrix(truth[known], label[known]).cpu().numpy(), MACERALS)
    return scores


def class_mask_ratios(label: torch.Tensor, keep: torch.Tensor) -> dict:
    """Share of each class among the confident unlabeled pixels (``train/mask_ratio_<class>``): a class that
    collapses shows here first."""
    kept = keep > 0
    total = max(int(kept.sum()), 1)
    counts = torch.bincount(label[kept], minlength=len(CLASS_NAMES))
    return {f"mask_ratio_{name}": counts[i].float() / total for i, name in enumerate(CLASS_NAMES)}


def online_label_logs(label: torch.Tensor, keep: torch.Tensor, inside: torch.Tensor, truth: list) -> dict:
    """What shows an online teacher's health: each class's share of the kept pixels and, where the truth
    of the unlabeled crops rides along (``truth``: [] or [maps]), the labels' quality against it."""
    return {**class_mask_ratios(label, keep), **(pseudo_label_quality(label, keep, inside, truth[0]) if truth else {})}


class Method:
    """What every method shares: built once per run with the context; trains the model as it is unless
    ``network`` wraps it (UniMatch's feature perturbation)."""

    def __init__(self, context: StepContext):
        self.context = context

    def network(self, model):
        return model
