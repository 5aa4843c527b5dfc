"""On-device augmentation with kornia.

One geometric pipeline moves image and mask together (and, for semi-supervised training, the
teacher's and the student's views share it); photometric pipelines then jitter the views separately.

Example:
    >>> import torch
    >>> aug = TrainAugment()
    >>> images, masks = torch.rand(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    >>> out_images, out_masks = aug.geometric(images, masks)
    >>> out_images.shape, out_masks.shape
    (torch.Size([2, 3, 64, 64]), torch.Size([2, 64, 64]))
"""

from __future__ import annotations

import torch
import kornia.augmentation as K
from torch import nn

from ssl_seg import IGNORE_INDEX


class GeometricAugment(nn.Module):
    """Flips, 90-degree turns and a mild affine, applied identically to images and masks.

    Pixels that the affine brings in from outside the crop become IGNORE_INDEX in the mask.
    """

    def __init__(self, degrees: float = 20.0, scale: tuple[float, float] = (0.75, 1.3)):
        super().__init__()
        # Microscope fields have no up or down: all 8 flip/rotate symmetries are valid.
        self.pipeline = K.AugmentationSequential(
            K.RandomHorizontalFlip(),
            K.RandomVerticalFlip(),
            K.RandomRotation90(times=(0, 3), p=0.5),
            K.RandomAffine(degrees=degrees, scale=scale, p=0.5),
            data_keys=["input", "mask"],
        )

    def forward(self, images: torch.Tensor, masks: torch.Tensor, *extra: torch.Tensor):
        """images (B,3,H,W) float; masks and ``extra`` maps (B,H,W) long/float -> same shapes."""
        # Shift labels by one so that the zero padding of out-of-crop pixels is recognisable.
        stacked = torch.stack([masks.float() + 1] + [e.float() + 1 for e in extra], dim=1)
        out_images, out_stacked = self.pipeline(images, stacked)
        outside = out_stacked[:, :1] == 0
        out_stacked = torch.where(outside, torch.zeros_like(out_stacked), out_stacked - 1)
        out_masks = out_stacked[:, 0].round().long()
        out_masks[outside[:, 0]] = IGNORE_INDEX
        extras = [(out_stacked[:, i + 1] if e.is_floating_point() else out_stacked[:, i + 1].round()).to(e.dtype)
                  for i, e in enumerate(extra)]
        return (out_images, out_masks, *extras) if extra else (out_images, out_masks)


def photometric(strength: str = "weak") -> nn.Module:
    """Colour jitter suited to microscope images: exposure, contrast, gamma, colour cast,
    uneven illumination, focus and sensor noise. ``strength`` is "weak" or "strong"."""
    strong = strength == "strong"
    return K.AugmentationSequential(
        K.ColorJiggle(brightness=0.4 if strong else 0.15, contrast=0.4 if strong else 0.15,
                      saturation=0.4 if strong else 0.1, hue=0.06 if strong else 0.02, p=0.9 if strong else 0.8),
        K.RandomGamma(gamma=(0.6, 1.6) if strong else (0.85, 1.2), p=0.5),
        K.RandomLinearIllumination(gain=(0.01, 0.25 if strong else 0.1), p=0.4),
        K.RandomGaussianBlur(kernel_size=5, sigma=(0.1, 2.0 if strong else 1.0), p=0.4 if strong else 0.2),
        K.RandomGaussianNoise(std=0.04 if strong else 0.015, p=0.5 if strong else 0.3),
        K.RandomGrayscale(p=0.2 if strong else 0.0),
        data_keys=["input"],
    )


def cutmix(images: torch.Tensor, *maps: torch.Tensor, prob: float = 0.5, area: tuple[float, float] = (0.1, 0.5)):
    """Paste a random box of another sample of the batch into each image and its label maps.

    kornia's RandomCutMixV2 mixes class labels but not segmentation masks, hence this small version.
    Returns (images, *maps) with the same box pasted into every tensor of a sample.
    """
    batch, _, height, width = images.shape
    device = images.device
    if batch < 2:
        return (images, *maps)
    partner = torch.roll(torch.arange(batch, device=device), shifts=1)
    box_area = torch.empty(batch, device=device).uniform_(*area) * height * width
    aspect = torch.exp(torch.empty(batch, device=device).uniform_(-0.7, 0.7))
    box_h = (box_area * aspect).sqrt().clamp(max=height).long()
    box_w = (box_area / aspect).sqrt().clamp(max=width).long()
    top = (torch.rand(batch, device=device) * (height - box_h + 1)).long()
    left = (torch.rand(batch, device=device) * (width - box_w + 1)).long()
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1)))
    inside &= (torch.rand(batch, device=device) < prob).view(-1, 1, 1)
    mixed_images = torch.where(inside.unsqueeze(1), images[partner], images)
    mixed_maps = [torch.where(inside.unsqueeze(1) if m.dim() == 4 else inside, m[partner], m) for m in maps]
    return (mixed_images, *mixed_maps)


class TrainAugment(nn.Module):
    """The training-time augmentation: shared geometry, then the teacher's weak and the student's
    photometric views. ``student_jitter="weak"`` draws the student's view with the weak jitter too
    (another draw of it): strong colour jitter blurs reflectance, the cue that tells macerals apart."""

    def __init__(self, degrees: float = 20.0, scale: tuple[float, float] = (0.75, 1.3), student_jitter: str = "weak"):
        super().__init__()
        if student_jitter not in ("strong", "weak"):
            raise ValueError(f"student_jitter must be strong or weak, not {student_jitter!r}")
        self.geometric = GeometricAugment(degrees, scale)
        self.weak = photometric("weak")
        self.student = photometric(student_jitter)
