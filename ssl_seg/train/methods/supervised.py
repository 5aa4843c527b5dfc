"""Supervised training on the labeled masks: class-weighted cross-entropy + Dice (``finetune``)."""

from __future__ import annotations

import torch

from ssl_seg.train.methods.base import Method, StepContext


def labeled_view(context: StepContext, batch_x: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The labeled crops under shared geometry and weak jitter, and their masks."""
    images, masks = context.augment.geometric(batch_x["image"], batch_x["mask"])
    return context.augment.weak(images).clamp_(0, 1), masks


class Supervised(Method):
    def step(self, batch_x: dict, batch_u: dict | None, net, teacher, step: int, logging: bool = False):
        ctx = self.context
        with ctx.timer("augment"):
            images, masks = labeled_view(ctx, batch_x)
        with ctx.timer("compute"), ctx.autocast():
            logits = net(images)
        loss, parts = ctx.criterion(logits, masks)
        return loss, {"loss_x": loss.detach(), **parts}
