"""Tile origins, seamless sliding-window inference and random crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_seg import IGNORE_INDEX
from ssl_seg.data.tiling import random_crop, sliding_window, tile_origins


@pytest.mark.parametrize(
    ("length", "tile", "stride"),
    [(10, 4, 3), (12, 4, 4), (1360, 512, 384), (1024, 512, 384), (5, 8, 6), (8, 8, 6), (9, 8, 1), (100, 7, 7)],
)
def test_tile_origins_cover_exactly(length: int, tile: int, stride: int) -> None:
    origins = tile_origins(length, tile, stride)
    assert origins[0] == 0
    assert origins == sorted(set(origins))
    if length <= tile:
        assert origins == [0]
        return
    assert origins[-1] == length - tile  # flush with the end
    assert all(b - a <= stride for a, b in zip(origins, origins[1:]))  # no gaps
    covered = np.zeros(length, bool)
    for origin in origins:
        covered[origin : origin + tile] = True
    assert covered.all()


def test_tile_origins_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        tile_origins(10, 0, 1)
    with pytest.raises(ValueError):
        tile_origins(10, 4, 0)


def _pixelwise_model(channels_out: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, channels_out, kernel_size=1)


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(70, 90, 32, 0.25), (64, 64, 32, 0.0), (20, 25, 32, 0.25), (10, 50, 32, 0.5), (33, 31, 32, 0.25),
     (3, 3, 16, 0.25)],
    ids=["bigger", "multiple-no-overlap", "smaller", "one-side-smaller", "non-multiple", "tiny-replicate"],
)
def test_sliding_window_matches_full_image_for_pixelwise_fn(height: int, width: int, tile: int, overlap: float) -> None:
    model = _pixelwise_model()
    images = torch.rand(2, 3, height, width)
    with torch.no_grad():
        expected = model(images)
        result = sliding_window(model, images, tile=tile, overlap=overlap, batch_size=3)
    assert result.shape == (2, 4, height, width)
    assert (result - expected).abs().max().item() < 1e-5


def test_sliding_window_keeps_images_apart() -> None:
    # Each image's output must come only from its own tiles, even when tiles are batched together.
    images = torch.stack([torch.full((3, 40, 40), float(b)) for b in range(3)])
    result = sliding_window(lambda x: x[:, :1] * 2, images, tile=16, overlap=0.25, batch_size=5)
    for b in range(3):
        assert torch.allclose(result[b], torch.full((1, 40, 40), 2.0 * b))


def test_sliding_window_blends_smoothly() -> None:
    # A 3x3 conv sees tile edges differently from the full image; the smooth window keeps the
    # error small and concentrated near tile borders rather than creating hard steps.
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 1, kernel_size=3, padding=1)
    images = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        expected = conv(images)
        result = sliding_window(conv, images, tile=32, overlap=0.5)
    interior = (result - expected)[..., 1:-1, 1:-1].abs()
    assert interior.max().item() < 0.2
    assert interior.mean().item() < 0.01


def test_sliding_window_validates_inputs() -> None:
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(lambda x: x, torch.rand(1, 3, 8, 8), tile=4, overlap=1.0)
    with pytest.raises(ValueError, match="predict_fn returned"):
        sliding_window(lambda x: x[:, :, :2], torch.rand(1, 3, 8, 8), tile=4)


@pytest.mark.parametrize(("height", "width"), [(40, 50), (10, 50), (5, 5)])
def test_random_crop_shapes_and_padding(height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), 200, np.uint8)
    mask = np.ones((height, width), np.uint8)
    image_crop, mask_crop = random_crop(image, mask, 16, rng)
    assert image_crop.shape == (16, 16, 3) and mask_crop.shape == (16, 16)
    padded = mask_crop == IGNORE_INDEX
    assert np.all(image_crop[padded] == 0) and np.all(image_crop[~padded] == 200)
    assert np.all(mask_crop[~padded] == 1)
    assert padded.any() == (height < 16 or width < 16)


def test_random_crop_aligns_image_and_mask_and_varies() -> None:
    values = np.arange(50 * 60, dtype=np.int64).reshape(50, 60)
    image = np.stack([values] * 3, axis=2)
    rng = np.random.default_rng(1)
    corners = set()
    for _ in range(10):
        image_crop, mask_crop = random_crop(image, values, 20, rng)
        np.testing.assert_array_equal(image_crop[:, :, 0], mask_crop)
        corners.add(int(mask_crop[0, 0]))
    assert len(corners) > 1
    image_crop, none = random_crop(image, None, 20, np.random.default_rng(0))
    assert none is None and image_crop.shape == (20, 20, 3)
    with pytest.raises(ValueError):
        random_crop(image, values[:10], 20, rng)


@pytest.mark.parametrize("tta", [1, 2, 8])
def test_tta_views_are_mapped_back(tta: int) -> None:
    from ssl_seg.inference import predict_proba

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)  # pixel-wise, so equivariant to flips and turns: TTA must change nothing
    x = torch.rand(1, 3, 40, 56)
    torch.testing.assert_close(predict_proba(model, x, tile_size=64, tta=tta), model(x).softmax(1))
