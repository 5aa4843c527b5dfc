"""Augmentation keeps image and mask aligned, on every device and dtype."""

import pytest
import torch

from ssl_seg import IGNORE_INDEX
from ssl_seg.augment import GeometricAugment, TrainAugment, cutmix, photometric

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]
COLOURS = torch.tensor([[0.1, 0.1, 0.1], [0.9, 0.2, 0.2], [0.2, 0.9, 0.2], [0.2, 0.2, 0.9]])


def blocky_batch(batch=6, size=64, seed=0):
    """Masks of 16-pixel blocks, and images painting each class its own colour."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 4, (batch, size // 16, size // 16), generator=g)
    masks = masks.repeat_interleave(16, 1).repeat_interleave(16, 2)
    images = COLOURS[masks].permute(0, 3, 1, 2)
    return images, masks


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_geometry_moves_image_and_mask_together(device, dtype):
    images, masks = blocky_batch()
    torch.manual_seed(1)
    out_images, out_masks = GeometricAugment(degrees=30)(images.to(device, dtype), masks.to(device))
    assert out_images.dtype == dtype and out_masks.dtype == torch.long
    # Each pixel's colour names its class: the nearest colour must be the mask's class.
    nearest = torch.cdist(out_images.permute(0, 2, 3, 1).reshape(-1, 3).float().cpu(), COLOURS).argmin(1)
    labelled = out_masks.cpu().reshape(-1) != IGNORE_INDEX
    agreement = (nearest[labelled] == out_masks.cpu().reshape(-1)[labelled]).float().mean()
    assert agreement > 0.97  # only interpolated block edges may differ
    assert set(out_masks.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}


@pytest.mark.parametrize("device", DEVICES)
def test_pixels_from_outside_the_crop_are_ignored(device):
    images, masks = blocky_batch(batch=4)
    torch.manual_seed(0)
    aug = GeometricAugment()
    aug.pipeline[3].p = 1.0  # always rotate by an affine: corners come from outside
    aug.pipeline[3]._param_generator.degrees = torch.tensor([40.0, 40.0])
    out_images, out_masks = aug(images.to(device), masks.to(device))
    outside = out_images.sum(1) == 0  # zero padding of the image
    assert outside.any()
    assert (out_masks[outside] == IGNORE_INDEX).all()


def test_extra_maps_follow_the_same_geometry():
    images, masks = blocky_batch()
    torch.manual_seed(3)
    _, out_masks, out_copy = GeometricAugment()(images, masks, masks.clone())
    inside = out_masks != IGNORE_INDEX
    assert torch.equal(out_masks[inside], out_copy[inside])


@pytest.mark.parametrize("strength", ["weak", "strong"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_photometric_changes_colours_not_shapes(strength, dtype):
    images, _ = blocky_batch()
    torch.manual_seed(0)
    out = photometric(strength)(images.to(dtype))
    assert out.shape == images.shape and out.dtype == dtype
    assert not torch.allclose(out, images.to(dtype))


def test_cutmix_pastes_the_same_box_into_every_map():
    images, masks = blocky_batch(batch=4)
    torch.manual_seed(0)
    mixed_images, mixed_masks, mixed_ids = cutmix(images, masks, torch.arange(4).view(4, 1, 1).expand(4, 64, 64),
                                                  prob=1.0)
    for i in range(4):
        pasted = mixed_ids[i] != i
        assert pasted.any() and (~pasted).any()
        source = int(mixed_ids[i][pasted][0])
        assert torch.equal(mixed_masks[i][pasted], masks[source][pasted])
        assert torch.equal(mixed_images[i][:, pasted], images[source][:, pasted])


def test_train_augment_views_share_geometry():
    aug = TrainAugment(student_jitter="strong")
    images, masks = blocky_batch()
    torch.manual_seed(0)
    geo_images, _ = aug.geometric(images, masks)
    teacher_view, student_view = aug.weak(geo_images), aug.student(geo_images)
    # Same geometry: the class layout (strongest channel) survives both colour jitters mostly unchanged.
    assert (teacher_view.argmax(1) == student_view.argmax(1)).float().mean() > 0.6


def test_ones_map_marks_the_pixels_inside_the_crop():
    """The trainer passes a map of ones to learn where the affine brought in padding."""
    images, masks = blocky_batch(batch=4)
    torch.manual_seed(0)
    aug = GeometricAugment()
    aug.pipeline[3].p = 1.0
    aug.pipeline[3]._param_generator.degrees = torch.tensor([40.0, 40.0])
    _, out_masks, inside = aug(images, masks, torch.ones_like(images[:, 0]))
    assert set(inside.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(inside == 0, out_masks == IGNORE_INDEX)


def test_weak_student_jitter_stays_closer_to_the_image():
    images = torch.rand(1, 3, 1, 1).expand(64, 3, 32, 32).contiguous()
    torch.manual_seed(0)
    strong = TrainAugment(student_jitter="strong").student(images).clamp(0, 1)
    torch.manual_seed(0)
    weak = TrainAugment(student_jitter="weak").student(images).clamp(0, 1)
    assert (weak - images).abs().mean() < 0.6 * (strong - images).abs().mean()
    with pytest.raises(ValueError, match="strong or weak"):
        TrainAugment(student_jitter="medium")
