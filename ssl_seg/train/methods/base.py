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
    class_prior: torch.Tensor | None = None  # the labeled pixels' class shares (distribution_alignment)

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


class DistributionAlignment:
    """ReMixMatch's distribution alignment (Berthelot et al., ICLR 2020), per pixel: the teacher's class
    probabilities times ``prior / running``, renormalised, where ``prior`` is the labeled pixels' class shares
    and ``running`` the running mean (``momentum`` per batch) of the teacher's own shares on the unlabeled pixels
    ``inside`` the image. A class the teacher under-predicts is scaled up until its mean probability matches
    its labeled share. That does not bring back a class whose probability is spread thin and never wins a pixel
    (experiments/RESULTS.md, "distribution alignment"). ``running`` starts at ``prior`` (no change) and is
    saved in the checkpoint: resume stays exact.

    >>> align = DistributionAlignment(torch.tensor([0.5, 0.5]), momentum=0.0)
    >>> probs = torch.tensor([[0.9, 0.9], [0.1, 0.1]]).view(1, 2, 1, 2)  # the teacher sees class 1 at 10%
    >>> align(probs, torch.ones(1, 1, 2)).view(2, 2).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """

    def __init__(self, prior: torch.Tensor, momentum: float = 0.99):
        self.prior = prior.float() / prior.sum()
        self.running = self.prior.clone()
        self.momentum = momentum

    def __call__(self, probs: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        weight = inside.unsqueeze(1).float()
        shares = (probs * weight).sum(dim=(0, 2, 3)) / weight.sum().clamp(min=1.0)
        self.running = self.momentum * self.running.to(probs.device) + (1.0 - self.momentum) * shares
        aligned = probs * (self.prior.to(probs.device) / self.running.clamp(min=1e-6)).view(1, -1, 1, 1)
        return aligned / aligned.sum(dim=1, keepdim=True)

    def observe(self, label: torch.Tensor, keep: torch.Tensor) -> None:
        """The pixels the thresholds kept; this alignment reads the probabilities only."""

    def state_dict(self) -> dict:
        return {"running": self.running.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.running = state["running"].float()


class KeptShareAlignment:
    """A per-class bias added to the teacher's log-probabilities, moved each step toward making each class's
    share of the *kept* pixels (confident and inside) match the labeled pixels' share ``prior``: a class the
    teacher never keeps (``observe``) has its bias raised, by ``rate`` times the clamped log ratio of the two
    shares, until it is kept. Unlike ``DistributionAlignment``, which matches mean probabilities, this reaches
    a class whose probability is spread thin and never wins a pixel or the threshold, in the spirit of
    DebiasPL's adaptive debiasing (Wang et al., CVPR 2022). Against a fixed threshold it lowers the other
    classes until almost nothing is kept (experiments/RESULTS.md, "distribution alignment").

    >>> align = KeptShareAlignment(torch.tensor([0.5, 0.5]), rate=1.0, momentum=0.0)
    >>> probs = torch.tensor([[0.9, 0.9], [0.1, 0.1]]).view(1, 2, 1, 2)
    >>> align.observe(torch.zeros(1, 1, 2, dtype=torch.long), torch.ones(1, 1, 2))  # class 1 never kept
    >>> align.bias.tolist()  # the clamped log ratio: down for the class kept too often, up for the other
    [-0.6931471824645996, 2.0]
    >>> align(probs, torch.ones(1, 1, 2)).argmax(dim=1).tolist()
    [[[1, 1]]]
    """

    def __init__(self, prior: torch.Tensor, rate: float = 0.05, momentum: float = 0.9, limit: float = 2.0):
        self.prior = prior.float() / prior.sum()
        self.bias = torch.zeros_like(self.prior)
        self.running = self.prior.clone()
        self.rate, self.momentum, self.limit = rate, momentum, limit

    def __call__(self, probs: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        return (probs.clamp(min=1e-8).log() + self.bias.to(probs.device).view(1, -1, 1, 1)).softmax(dim=1)

    def observe(self, label: torch.Tensor, keep: torch.Tensor) -> None:
        kept = keep > 0
        shares = torch.bincount(label[kept], minlength=len(self.prior)).float().cpu() / max(int(kept.sum()), 1)
        self.running = self.momentum * self.running + (1.0 - self.momentum) * shares
        ratio = (self.prior / self.running.clamp(min=1e-6)).log().clamp(-self.limit, self.limit)
        self.bias = self.bias + self.rate * ratio

    def state_dict(self) -> dict:
        return {"running": self.running.cpu(), "bias": self.bias.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.running, self.bias = state["running"].float(), state["bias"].float()


ALIGNMENTS = {"mean": DistributionAlignment, "kept": KeptShareAlignment}


class Method:
    """What every method shares: built once per run with the context; trains the model as it is unless
    ``network`` wraps it (UniMatch's feature perturbation). What a method carries across steps (the
    distribution alignment's running shares) goes through ``state_dict`` into the checkpoint."""

    def __init__(self, context: StepContext):
        self.context = context
        alignment = context.cfg.distribution_alignment
        self.alignment = ALIGNMENTS[alignment](context.class_prior) if alignment != "none" else None

    def network(self, model):
        return model

    def teacher_labels(self, logits: torch.Tensor, inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence, label) of the teacher's logits, distribution-aligned where configured."""
        probs = logits.float().softmax(dim=1)
        if self.alignment is not None:
            probs = self.alignment(probs, inside)
        return probs.max(dim=1)

    def kept(self, label: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``keep``, after telling the alignment (where configured) which pixels the thresholds kept."""
        if self.alignment is not None:
            self.alignment.observe(label, keep)
        return keep

    def state_dict(self) -> dict:
        return {"alignment": self.alignment.state_dict()} if self.alignment is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.alignment is not None and "alignment" in state:
            self.alignment.load_state_dict(state["alignment"])


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
    With ``class_thresholds="class_share"`` every predicted class keeps the same share of its pixels (its
    most confident ones): the share that ``threshold`` keeps of all pixels ``inside``. The kept class mix
    is then the argmax mix, which sits near the truth where the kept mix at one threshold does not
    (experiments/RESULTS.md, "labeled scenes in both lights").

    >>> confidence = torch.tensor([[[0.99, 0.95, 0.6, 0.4]]])
    >>> label = torch.tensor([[[0, 0, 1, 1]]])
    >>> confident_pixels(confidence, label, 0.9).tolist(), confident_pixels(confidence, label, 0.9, 0.5).tolist()
    ([[[1.0, 1.0, 0.0, 0.0]]], [[[1.0, 1.0, 1.0, 0.0]]])
    >>> confident_pixels(confidence, label, 0.9, class_thresholds="teacher_mean").tolist()
    [[[1.0, 1.0, 1.0, 0.0]]]
    >>> confident_pixels(confidence, label, 0.9, class_thresholds="class_share").tolist()
    [[[1.0, 0.0, 1.0, 0.0]]]
    """
    if class_thresholds == "class_share":
        within = torch.ones_like(confidence, dtype=torch.bool) if inside is None else inside > 0
        share = float(((confidence >= threshold) & within).sum()) / max(int(within.sum()), 1)
        keep = torch.zeros_like(confidence, dtype=torch.bool)
        if share > 0:
            for c in label[within].unique():
                of_class = (label == c) & within
                floor = torch.quantile(confidence[of_class].float(), 1.0 - share)
                keep |= of_class & (confidence >= floor)
        return keep.float()
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
