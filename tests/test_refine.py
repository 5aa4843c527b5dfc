import numpy as np
import pytest
from PIL import Image

from ssl_seg import IGNORE_INDEX
from ssl_seg.pseudo.refine import superpixel_refine, superpixels, threshold_labels

COLOURS = np.array([[30, 30, 30], [235, 235, 235], [150, 150, 150], [200, 170, 40]], np.uint8)


def piecewise_scene(height: int = 120, width: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A flat-coloured image and its true class map: three particles on a dark background."""
    truth = np.zeros((height, width), np.uint8)
    truth[10:60, 15:70] = 1
    truth[70:110, 20:140] = 2
    rows, cols = np.ogrid[:height, :width]
    truth[(rows - 35) ** 2 + (cols - 120) ** 2 < 22**2] = 3
    return COLOURS[truth], truth


def noisy_teacher(truth: np.ndarray, flip_fraction: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = truth.copy()
    flip = rng.random(truth.shape) < flip_fraction
    labels[flip] = (truth[flip] + rng.integers(1, 4, flip.sum())) % 4
    return labels


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_threshold_labels_ignores_unconfident_pixels(threshold):
    labels = np.array([[0, 1, 2, 3]], np.uint8)
    confidence = np.array([[0.49, 0.5, 0.79, 0.8]], np.float32)
    expected = np.where(confidence >= threshold, labels, IGNORE_INDEX)
    result = threshold_labels(labels, confidence, threshold)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
def test_superpixels_snap_noisy_confident_teacher_to_true_regions(method):
    image, truth = piecewise_scene()
    labels = noisy_teacher(truth, flip_fraction=0.15)
    confidence = np.full(truth.shape, 0.95, np.float32)

    refined, stats = superpixel_refine(image, labels, confidence, method=method)

    assert (labels == truth).mean() < 0.9
    assert (refined == truth).mean() > 0.98
    assert stats["segments"] > 10
    assert stats["changed_pixels"] > 0.1 * truth.size


def test_unconfident_superpixels_become_ignore():
    image, truth = piecewise_scene()
    confidence = np.full(truth.shape, 0.95, np.float32)
    confidence[70:110, 20:140] = 0.3  # the whole vitrinite band is unconfident
    refined, _ = superpixel_refine(image, truth.copy(), confidence)
    interior = refined[75:105, 25:135]
    assert (interior == IGNORE_INDEX).mean() > 0.95
    # Confident regions are untouched.
    assert (refined[10:60, 15:70] == 1).mean() > 0.98


def test_partly_confident_superpixel_is_filled_by_its_confident_majority():
    image, truth = piecewise_scene()
    confidence = np.full(truth.shape, 0.95, np.float32)
    confidence[::2, :] = 0.1  # every other row unconfident: half of each superpixel votes
    refined, stats = superpixel_refine(image, truth.copy(), confidence, min_coverage=0.4)
    assert (refined == truth).mean() > 0.98
    assert stats["changed_pixels"] == int((refined != threshold_labels(truth, confidence, 0.8)).sum())


def test_changed_pixels_counts_exactly_the_outvoted_pixels():
    image, truth = piecewise_scene()
    labels = truth.copy()
    labels[20:23, 30:33] = 2  # 9 wrong pixels inside the inertinite particle
    confidence = np.full(truth.shape, 0.95, np.float32)
    refined, stats = superpixel_refine(image, labels, confidence)
    np.testing.assert_array_equal(refined, truth)
    assert stats["changed_pixels"] == 9


def test_superpixel_ids_cover_the_image_and_respect_n_segments():
    image, _ = piecewise_scene()
    segments = superpixels(image, n_segments=50)
    assert segments.shape == image.shape[:2]
    assert 10 < len(np.unique(segments)) < 120


@pytest.mark.parametrize(
    ("labels_shape", "confidence_shape", "message"),
    [((120, 160), (120, 100), "confidence shape"), ((100, 160), (100, 160), "image shape")],
)
def test_mismatched_shapes_are_refused(labels_shape, confidence_shape, message):
    image, _ = piecewise_scene()
    with pytest.raises(ValueError, match=message):
        superpixel_refine(image, np.zeros(labels_shape, np.uint8), np.ones(confidence_shape, np.float32))


def test_unknown_method_is_refused():
    image, truth = piecewise_scene()
    with pytest.raises(ValueError, match="unknown superpixel method"):
        superpixel_refine(image, truth, np.ones(truth.shape, np.float32), method="watershed")


def test_refines_a_real_full_size_image(real_data):
    # its speed is measured by experiments/bench_pseudo_label.py, not here
    path = sorted((real_data / "ss1_unlabeled").glob("*.jpg"))[0]
    image = np.asarray(Image.open(path).convert("RGB"))
    rng = np.random.default_rng(0)
    labels = np.minimum(image.mean(axis=2) // 64, 3).astype(np.uint8)  # a brightness "teacher"
    confidence = (0.6 + 0.4 * rng.random(labels.shape)).astype(np.float32)

    refined, stats = superpixel_refine(image, labels, confidence)

    assert refined.shape == labels.shape and refined.dtype == np.uint8
    assert set(np.unique(refined)) <= {0, 1, 2, 3, IGNORE_INDEX}
    assert stats["segments"] > 1000


def test_class_balanced_confidence_keeps_a_share_of_every_class():
    from ssl_seg.pseudo.refine import class_balanced_confidence

    rng = np.random.default_rng(0)
    labels = rng.choice(4, size=(64, 64), p=[0.85, 0.05, 0.07, 0.03]).astype(np.uint8)
    # A teacher sure of background and unsure of macerals, as early teachers are.
    confidence = np.where(labels == 0, rng.uniform(0.9, 1.0, labels.shape), rng.uniform(0.3, 0.7, labels.shape))
    confidence = confidence.astype(np.float32)
    assert (threshold_labels(labels, confidence, 0.9)[labels > 0] == 255).all()

    balanced = class_balanced_confidence(labels, confidence, threshold=0.9, keep=0.5)
    kept = threshold_labels(labels, balanced, 0.9)
    for class_id in range(4):
        share = (kept[labels == class_id] == class_id).mean()
        assert share >= 0.5, (class_id, share)
    assert (balanced >= confidence).all() and balanced.max() <= 1.0
    assert class_balanced_confidence(labels, confidence, 0.9, keep=0.0) is confidence


def test_class_balanced_confidence_keeps_its_share_despite_float32_rounding():
    from ssl_seg.pseudo.refine import class_balanced_confidence

    rng = np.random.default_rng(0)
    for _ in range(300):  # before the fix, about one draw in five kept 50 of 101 pixels
        confidence = rng.uniform(0.2, 0.79, (1, 101)).astype(np.float32)
        labels = np.ones_like(confidence, dtype=np.uint8)
        kept = threshold_labels(labels, class_balanced_confidence(labels, confidence, 0.8, keep=0.5), 0.8)
        assert (kept != IGNORE_INDEX).sum() >= 51
