"""UniMatch (Yang et al., CVPR 2023), online: weak view -> pseudo-label -> two strong views and a
feature-perturbed branch (``pretrain``'s ``method: unimatch``).

Per step: the labeled crops and the weak view of the unlabeled crops go through one forward pass whose
encoder features are also decoded a second time under ``Dropout2d(feature_dropout)``; the weak view's
prediction (the EMA teacher's, or the model's own with ``unimatch_teacher: own``) labels two strong views
(CutMixed within the batch, independently) and the perturbed branch. Unlabeled losses are class-weighted
cross-entropy + Dice over confident pixels (with ``consistency_class_balance``, also each class's most
confident share), so that background (most pixels) does not outweigh macerals;
they are ramped up over ``rampup_fraction`` of the run. Pseudo-labels from ``pseudo-label``, where given,
supervise the weak view as well.
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_seg import IGNORE_INDEX
from ssl_seg.augment import cutmix
from ssl_seg.train.losses import pixel_weighted_loss
from ssl_seg.train.methods.base import Method, confident_pixels, online_label_logs, true_pixels
from ssl_seg.train.methods.supervised import labeled_view


class FeaturePerturbed(nn.Module):
    """``model`` whose forward also decodes the last ``n_perturbed`` samples' features through Dropout2d:
    the perturbation sits between encoder and decoder, and DDP sees one forward call."""

    def __init__(self, model: nn.Module, p: float):
        super().__init__()
        self.model, self.dropout = model, nn.Dropout2d(p)

    def forward(self, images: torch.Tensor, n_perturbed: int = 0):
        if not n_perturbed:
            return self.model(images)
        features = self.model.encode(images)
        many = isinstance(features, (tuple, list))
        levels = features if many else (features,)
        mixed = tuple(torch.cat([f, self.dropout(f[-n_perturbed:])]) for f in levels)
        logits = self.model.decode(mixed if many else mixed[0], images.shape[-2:])
        return logits[:images.shape[0]], logits[images.shape[0]:]


class UniMatch(Method):
    def network(self, model):
        return FeaturePerturbed(model, self.context.cfg.feature_dropout)

    def _strong_view(self, images_u, label, keep):
        ctx = self.context
        strong = ctx.augment.student(images_u).clamp_(0, 1)
        return cutmix(strong, label, keep, prob=ctx.cfg.cutmix_prob)

    def step(self, batch_x: dict | None, batch_u: dict, net, teacher, step: int, logging: bool = False):
        ctx, cfg = self.context, self.context.cfg
        with ctx.timer("augment"):
            images_x, masks_x = labeled_view(ctx, batch_x) if batch_x is not None else (None, None)
            known = (batch_u["truth"],) if "truth" in batch_u else ()  # procedural data: for diagnostics only
            images_u, pseudo_u, inside, *truth = ctx.augment.geometric(batch_u["image"], batch_u["mask"],
                                                                      batch_u["valid"].float(), *known)
            weak_u = ctx.augment.weak(images_u).clamp_(0, 1)
        n_x, n_u = ctx.n_labeled, weak_u.shape[0]
        with ctx.timer("compute"), ctx.autocast():
            both = weak_u if images_x is None else torch.cat([images_x, weak_u])
            logits, logits_fp = net(both, n_perturbed=n_u)
        if cfg.oracle_pseudo_labels:  # the truth in the teacher's place: no teacher call
            label, keep = true_pixels(truth, inside)
        else:
            with ctx.timer("teacher"), torch.no_grad():
                if cfg.unimatch_teacher == "ema":
                    with ctx.autocast():
                        weak_logits = teacher(weak_u)
                else:
                    weak_logits = logits[n_x:].detach()
                confidence, label = self.teacher_labels(weak_logits, inside)
                keep = self.kept(label, confident_pixels(confidence, label, cfg.consistency_threshold,
                                                         cfg.consistency_class_balance, cfg.class_thresholds,
                                                         inside) * inside)
        with ctx.timer("augment"):
            strong_1, label_1, keep_1 = self._strong_view(images_u, label, keep)
            strong_2, label_2, keep_2 = self._strong_view(images_u, label, keep)
        with ctx.timer("compute"):
            with ctx.autocast():
                logits_1, logits_2 = net(torch.cat([strong_1, strong_2])).chunk(2)
            weights, dice = ctx.criterion.weights, cfg.dice_weight
            loss_s = 0.5 * (pixel_weighted_loss(logits_1, label_1, keep_1, weights, dice)
                            + pixel_weighted_loss(logits_2, label_2, keep_2, weights, dice))
            loss_fp = pixel_weighted_loss(logits_fp, label, keep, weights, dice)
            loss_u = 0.5 * loss_s + 0.5 * loss_fp
            loss = cfg.consistency_weight * ctx.ramp(step) * loss_u
            logs = {"loss_u_strong": loss_s.detach(), "loss_u_fp": loss_fp.detach(), "mask_ratio": keep.mean()}
            if images_x is not None:
                loss_x, parts = ctx.criterion(logits[:n_x], masks_x)
                loss = loss + loss_x
                logs.update(loss_x=loss_x.detach(), **parts)
            if cfg.pseudo_labels and bool((pseudo_u != IGNORE_INDEX).any()):
                loss_pseudo = ctx.criterion(logits[n_x:], pseudo_u)[0]
                loss = loss + loss_pseudo
                logs["loss_pseudo"] = loss_pseudo.detach()
        if logging:
            logs.update(online_label_logs(label, keep, inside, truth))
        return loss, logs

