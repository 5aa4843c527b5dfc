"""Mean teacher with pseudo-labels (``pretrain``'s ``method: mean_teacher``).

The student learns the pseudo-labels of unlabeled crops (where ``pseudo-label`` wrote them) and the EMA
teacher's confident prediction of a weak view, on another, CutMixed view of the same geometry; labeled
crops join the same forward pass at ``labeled_ratio``. Pixels below ``consistency_threshold`` and padding
are left out.
"""

from __future__ import annotations

import torch

from ssl_seg import IGNORE_INDEX
from ssl_seg.augment import cutmix
from ssl_seg.train.losses import masked_cross_entropy
from ssl_seg.train.methods.base import Method
from ssl_seg.train.methods.supervised import labeled_view


class MeanTeacher(Method):
    def step(self, batch_x: dict | None, batch_u: dict, net, teacher, step: int, logging: bool = False):
        ctx, cfg = self.context, self.context.cfg
        parts_images, parts_targets = [], []
        with ctx.timer("augment"):
            if batch_x is not None:
                images_x, masks_x = labeled_view(ctx, batch_x)
                parts_images.append(images_x)
                parts_targets.append(masks_x)
            # ``inside`` is 0 on padding (of small images, or brought in by the affine): nothing is learned there
            images_u, pseudo_u, inside = ctx.augment.geometric(batch_u["image"], batch_u["mask"],
                                                              batch_u["valid"].float())
            weak_u = ctx.augment.weak(images_u).clamp_(0, 1)
            student_u = ctx.augment.student(images_u).clamp_(0, 1)
        with ctx.timer("teacher"), torch.no_grad(), ctx.autocast():
            confidence, label = teacher(weak_u).float().softmax(dim=1).max(dim=1)
        with ctx.timer("augment"):
            student_u, pseudo_u, label, confidence, inside = cutmix(
                student_u, pseudo_u, label, confidence, inside, prob=cfg.cutmix_prob)
            keep = (confidence >= cfg.consistency_threshold).float() * inside
            parts_images.append(student_u)
            parts_targets.append(pseudo_u)
        with ctx.timer("compute"):
            with ctx.autocast():
                logits = net(torch.cat(parts_images))
            loss, parts = ctx.criterion(logits, torch.cat(parts_targets))
            loss_consistency = masked_cross_entropy(logits[ctx.n_labeled:], label, keep)
        logs = {"loss_consistency": loss_consistency.detach(), "mask_ratio": keep.mean(), **parts}
        if logging:  # the labeled and pseudo-labeled parts on their own as well
            with torch.no_grad():
                if ctx.n_labeled:
                    logs["loss_x"] = ctx.criterion(logits[:ctx.n_labeled].detach(), parts_targets[0])[0]
                if cfg.pseudo_labels and bool((pseudo_u != IGNORE_INDEX).any()):
                    logs["loss_pseudo"] = ctx.criterion(logits[ctx.n_labeled:].detach(), pseudo_u)[0]
        return loss + cfg.consistency_weight * ctx.ramp(step) * loss_consistency, logs
