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


def confident_pixels(confidence: torch.Tensor, label: torch.Tensor, threshold: float, class_balance: float = 0.0,
                     class_thresholds: str = "fixed", inside: torch.Tensor | None = None):
    """1 where the weak view's ``confidence`` reaches ``threshold``; with ``class_balance`` > 0, each predicted
    class also keeps the most confident ``class_balance`` share of its pixels, so that a class the teacher is
    never sure of (early in a from-scratch run, the macerals) is still taught; the online, per-batch
    counterpart of ``pseudo.refine.class_balanced_confidence``. It hurt in experiments/RESULTS.md, so 0 is the default.
    With ``class_thresholds="teacher_mean"`` each predicted class's threshold is the lower of ``threshold`` and
    the batch's mean confidence on that class: the threshold follows the teacher up (FlexMatch's idea, per
    batch), so a class it is unsure of is taught from its surer half and one it is sure of from ``threshold``;
    the means are over the pixels ``inside`` the image (1; 0 for padding brought in by the geometry).

    >>> confidence = torch.tensor([[[0.99, 0.95, 0.6, 0.4]]])
    >>> label = torch.tensor([[[0, 0, 1, 1]]])
    >>> confident_pixels(confidence, label, 0.9).tolist(), confident_pixels(confidence, label, 0.9, 0.5).tolist()
    ([[[1.0, 1.0, 0.0, 0.0]]], [[[1.0, 1.0, 1.0, 0.0]]])
    >>> confident_pixels(confidence, label, 0.9, class_thresholds="teacher_mean").tolist()
    [[[1.0, 1.0, 1.0, 0.0]]]
    """
    if class_thresholds == "teacher_mean":
        weight = (torch.ones_like(confidence) if inside is None else inside).flatten().float()
        means = torch.zeros(NUM_CLASSES, device=label.device).index_add_(0, label.flatten(),
                                                                        confidence.flatten().float() * weight)
        means /= torch.zeros(NUM_CLASSES, device=label.device).index_add_(0, label.flatten(), weight).clamp(min=1e-6)
        threshold = means.clamp(max=threshold)[label]
    keep = confidence >= threshold
    if class_balance > 0:
        for c in label.unique():
            of_class = label == c
            floor = torch.quantile(confidence[of_class].float(), 1.0 - class_balance)
            keep |= of_class & (confidence >= floor)
    return keep.float()


def true_pixels(truth: list, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``oracle_pseudo_labels``: the unlabeled crops' true masks (``truth``: [maps]) as labels, kept wherever
    known and inside the image; the ceiling any teacher could reach."""
    if not truth:
        raise ValueError("oracle_pseudo_labels needs the unlabeled images' true masks in train/unlabeled_truth/ "
                         "(procedural data written with unlabeled_truth=True)")
    known = truth[0] != IGNORE_INDEX
    return torch.where(known, truth[0], torch.zeros_like(truth[0])), known.float() * inside
