"""Bidirectional copy-paste (BCP; Bai et al., CVPR 2023), online (``pretrain``'s ``method: copy_paste``).

Each step pairs labeled crop i with unlabeled crop i and draws one box (``copy_paste_box`` of each side, at
a random place) per pair. The student sees two mixed crops: the unlabeled crop with the labeled crop's box
pasted in, and the labeled crop with the unlabeled crop's box pasted in. The truth supervises the labeled
parts; the EMA teacher's prediction of the weak unlabeled view, where confident, supervises the unlabeled
parts with weight ``copy_paste_unlabeled_weight``. For the first ``copy_paste_warmup`` of the steps the
partner is another labeled crop (labeled-only copy-paste, BCP's pre-training), so that the teacher knows
something before it teaches. Labeled pixels thus always sit next to unlabeled context: the two sets are
seen as one distribution, not two.
"""

from __future__ import annotations

import torch

from ssl_seg import IGNORE_INDEX
from ssl_seg.train.losses import pixel_weighted_loss
from ssl_seg.train.methods.base import Method, confident_pixels, online_label_logs, true_pixels
from ssl_seg.train.methods.supervised import labeled_view


def paste_boxes(n: int, height: int, width: int, side: float, device=None) -> torch.Tensor:
    """(n, H, W) bool: one box per sample, ``side`` of each dimension, at a uniform random place.

    >>> box = paste_boxes(2, 6, 9, 2 / 3)
    >>> box.shape, box.sum(dim=(1, 2)).tolist()
    (torch.Size([2, 6, 9]), [24, 24])
    """
    box_h, box_w = max(1, round(side * height)), max(1, round(side * width))
    top = torch.randint(0, height - box_h + 1, (n, 1, 1), device=device)
    left = torch.randint(0, width - box_w + 1, (n, 1, 1), device=device)
    rows = torch.arange(height, device=device).view(1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, -1)
    return (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)


def paste(box: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    """``inner`` inside ``box``, ``outer`` elsewhere; images (B,C,H,W) or maps (B,H,W)."""
    return torch.where(box.unsqueeze(1) if inner.dim() == 4 else box, inner, outer)


def mix_both_ways(box: torch.Tensor, labeled: tuple, unlabeled: tuple) -> list[torch.Tensor]:
    """(images, labels, weights) of the two mixed batches, one after the other: the unlabeled crops with the
    labeled crops' boxes pasted in, then the labeled crops with the unlabeled crops' boxes pasted in. Image,
    label and weight of a pixel always come from the same crop."""
    return [torch.cat([paste(box, a, b), paste(box, b, a)]) for a, b in zip(labeled, unlabeled)]


class CopyPaste(Method):
    def step(self, batch_x: dict | None, batch_u: dict, net, teacher, step: int, logging: bool = False):
        ctx, cfg = self.context, self.context.cfg
        if batch_x is None:
            raise ValueError("method copy_paste pairs labeled with unlabeled crops: set labeled_ratio between 0 and 1")
        with ctx.timer("augment"):
            images_x, masks_x = labeled_view(ctx, batch_x)
            known = (batch_u["truth"],) if "truth" in batch_u else ()  # procedural data: for diagnostics only
            images_u, pseudo_u, inside, *truth = ctx.augment.geometric(batch_u["image"], batch_u["mask"],
                                                                       batch_u["valid"].float(), *known)
            images_u = ctx.augment.weak(images_u).clamp_(0, 1)
        warming_up = step < cfg.copy_paste_warmup * cfg.steps
        if warming_up:  # labeled-only copy-paste: the partner is the next labeled crop, all of it truth
            partner = torch.roll(torch.arange(images_x.shape[0], device=images_x.device), 1)
            images_u, label_u, weight_u = images_x[partner], masks_x[partner], (masks_x[partner] != IGNORE_INDEX)
            weight_u = weight_u.float()
        elif cfg.oracle_pseudo_labels:
            label_u, keep = true_pixels(truth, inside)
        elif cfg.pseudo_labels:  # the offline pseudo-labels of ``pseudo-label`` take the teacher's place
            keep = (pseudo_u != IGNORE_INDEX).float()
            label_u = torch.where(keep > 0, pseudo_u, torch.zeros_like(pseudo_u))
        else:
            with ctx.timer("teacher"), torch.no_grad(), ctx.autocast():
                confidence, label_u = self.teacher_labels(teacher(images_u), inside)
            keep = self.kept(label_u, confident_pixels(confidence, label_u, cfg.consistency_threshold,
                                                       class_thresholds=cfg.class_thresholds, inside=inside) * inside)
        if not warming_up:
            weight_u = keep * (cfg.copy_paste_unlabeled_weight * ctx.ramp(step))
        # pair i with i: both sets have the same number of crops at labeled_ratio 0.5, else the smaller set repeats
        n = max(images_x.shape[0], images_u.shape[0])
        ix, iu = (torch.arange(n, device=images_x.device) % len(t) for t in (images_x, images_u))
        x, y, w_x = images_x[ix], masks_x[ix], (masks_x[ix] != IGNORE_INDEX).float()
        u, p, w_u = images_u[iu], label_u[iu], weight_u[iu]
        y, p = (torch.where(m == IGNORE_INDEX, torch.zeros_like(m), m) for m in (y, p))  # weight 0 there
        box = paste_boxes(n, *x.shape[-2:], cfg.copy_paste_box, device=x.device)
        mixed, target, weight = mix_both_ways(box, (x, y, w_x), (u, p, w_u))
        with ctx.timer("compute"):
            with ctx.autocast():
                logits = net(mixed)
            loss = pixel_weighted_loss(logits, target, weight, ctx.criterion.weights, cfg.dice_weight)
        logs = {"loss_mixed": loss.detach()}
        if not warming_up:
            logs["mask_ratio"] = keep.mean()
            if logging:
                logs.update(online_label_logs(label_u, keep, inside, truth))
        return loss, logs
