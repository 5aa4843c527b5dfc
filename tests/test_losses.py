"""The segmentation loss: ignore handling, class weights, Dice on labeled samples only."""

import numpy as np
import pytest
import torch

from ssl_seg import IGNORE_INDEX
from ssl_seg.train.losses import SegmentationLoss, class_weights, masked_cross_entropy


def test_all_ignored_samples_do_not_dilute_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(4, 4, 16, 16, requires_grad=True)
    target = torch.randint(0, 4, (4, 16, 16))
    target[2:] = IGNORE_INDEX  # e.g. online pretraining: unlabeled crops carry no labels
    loss = SegmentationLoss(dice_weight=0.5)
    total, parts = loss(logits, target)
    labeled_total, labeled_parts = loss(logits[:2], target[:2])
    torch.testing.assert_close(parts["dice"], labeled_parts["dice"])
    torch.testing.assert_close(total, labeled_total)
    total.backward()
    assert logits.grad[2:].abs().max() == 0


def test_a_batch_without_labels_gives_zero_with_a_graph():
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    total, parts = SegmentationLoss()(logits, torch.full((2, 8, 8), IGNORE_INDEX))
    total.backward()
    assert total.item() == 0 and parts["dice"] == 0 and logits.grad is not None


def test_masked_cross_entropy_divides_by_all_pixels():
    logits = torch.zeros(1, 4, 2, 2)
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    keep = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert masked_cross_entropy(logits, target, keep).item() == pytest.approx(np.log(4) / 4)


def test_class_weights_have_pixel_weighted_mean_one():
    counts = np.array([900, 50, 40, 10])
    for mode in ("inverse", "inverse_sqrt"):
        weights = class_weights(counts, mode).numpy()
        assert float((weights * counts / counts.sum()).sum()) == pytest.approx(1.0)
        assert weights[3] > weights[2] > weights[1] > weights[0]
