"""Weight-free pseudo-label refinement: confidence thresholding and superpixel voting.

The teacher's per-pixel labels are noisy near edges and speckled inside particles. Superpixels
follow the image's own edges, so letting the confident teacher pixels of each superpixel vote
on one class for the whole superpixel both removes speckle and snaps boundaries to the image.

Example:
    >>> import numpy as np
    >>> image = np.zeros((64, 64, 3), np.uint8); image[:, 32:] = 200
    >>> labels = np.zeros((64, 64), np.uint8); labels[:, 30:] = 2   # teacher edge 2 px off
    >>> confidence = np.full((64, 64), 0.9, np.float32)
    >>> refined, stats = superpixel_refine(image, labels, confidence, n_segments=16)
    >>> int((refined[:, 32:] == 2).mean() > 0.9), int((refined[:, :30] == 0).mean() > 0.9)
    (1, 1)
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.segmentation import felzenszwalb, slic

from ssl_seg import IGNORE_INDEX, NUM_CLASSES

SUPERPIXEL_METHODS = ("slic", "felzenszwalb")
# Default superpixel size: about 20x20 px, small enough for thin liptinite lenses.
DEFAULT_SUPERPIXEL_AREA = 400
# Working resolution per method (longest side), chosen so a 1024x1360 image takes about 1 s.
DEFAULT_MAX_SIDE = {"slic": 1024, "felzenszwalb": 768}


def check_teacher_maps(labels: np.ndarray, confidence: np.ndarray, image: np.ndarray | None = None) -> None:
    """Raise ValueError with one line when teacher maps (and image) disagree in shape or type."""
    if labels.ndim != 2:
        raise ValueError(f"teacher labels must be HxW, got shape {labels.shape}: pass the argmax map")
    if confidence.shape != labels.shape:
        raise ValueError(
            f"teacher confidence shape {confidence.shape} differs from labels shape {labels.shape}: "
            "pass the max-probability map of the same image"
        )
    if image is not None and image.shape[:2] != labels.shape:
        raise ValueError(
            f"image shape {image.shape[:2]} differs from teacher labels shape {labels.shape}: "
            "run the teacher on the full-size image"
        )
    bad = (labels >= NUM_CLASSES) & (labels != IGNORE_INDEX)
    if bad.any():
        raise ValueError(
            f"teacher labels hold value {int(labels[bad].flat[0])}: expected class codes 0..{NUM_CLASSES - 1}"
        )


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Return an HxWx3 uint8 view of an HxW, HxWx1, HxWx3 or HxWx4 image (alpha dropped)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be HxW or HxWx3, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}: load it with ssl_seg's image reader")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def threshold_labels(labels: np.ndarray, confidence: np.ndarray, threshold: float) -> np.ndarray:
    """The teacher-alone pseudo mask: labels where confidence >= threshold, IGNORE_INDEX elsewhere.

    Confidence 0 is never kept, even at threshold 0: it marks pixels where the DINOv2 feature
    teacher disagrees (a softmax confidence is at least 1 / classes).

    >>> threshold_labels(np.array([[1, 2, 3]], np.uint8), np.array([[0.9, 0.5, 0.0]], np.float32), 0.8)
    array([[  1, 255, 255]], dtype=uint8)
    >>> threshold_labels(np.array([[1, 2, 3]], np.uint8), np.array([[0.9, 0.5, 0.0]], np.float32), 0.0)
    array([[  1,   2, 255]], dtype=uint8)
    """
    check_teacher_maps(labels, confidence)
    return np.where((confidence >= threshold) & (confidence > 0), labels, IGNORE_INDEX).astype(np.uint8)


def default_n_segments(height: int, width: int) -> int:
    """Number of superpixels that gives about DEFAULT_SUPERPIXEL_AREA pixels each."""
    return max(16, round(height * width / DEFAULT_SUPERPIXEL_AREA))


def superpixels(
    image: np.ndarray, method: str = "slic", n_segments: int | None = None, max_side: int | None = None
) -> np.ndarray:
    """Superpixel ids (int64 HxW, small non-negative integers, possibly with gaps) of an RGB image.

    Large images are segmented at a reduced size (longest side `max_side`, default per method)
    and the ids mapped back by nearest neighbour: the cost grows with pixel count, and the
    boundary error stays about one working pixel.
    """
    if method not in SUPERPIXEL_METHODS:
        raise ValueError(f"unknown superpixel method {method!r}: use one of {', '.join(SUPERPIXEL_METHODS)}")
    image = as_rgb(image)
    height, width = image.shape[:2]
    n_segments = default_n_segments(height, width) if n_segments is None else int(n_segments)
    max_side = DEFAULT_MAX_SIDE[method] if max_side is None else int(max_side)
    scale = min(1.0, max_side / max(height, width))
    work = image
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        work = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    if method == "slic":
        segments = slic(work, n_segments=n_segments, compactness=10.0, start_label=0, channel_axis=-1)
    else:
        # Felzenszwalb has no segment count; min_size keeps segments near the requested size.
        target_area = work.shape[0] * work.shape[1] / n_segments
        segments = felzenszwalb(work, scale=100.0, sigma=0.8, min_size=max(4, int(target_area / 4)))
    if scale < 1.0:
        # nearest neighbour by pixel centre: full-size pixel i lies in work pixel floor((i + 0.5) * ratio)
        rows = np.minimum(((np.arange(height) + 0.5) * work.shape[0] / height).astype(np.int64), work.shape[0] - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * work.shape[1] / width).astype(np.int64), work.shape[1] - 1)
        segments = segments[rows[:, None], cols[None, :]]
    return segments.astype(np.int64, copy=False)


def superpixel_refine(
    image: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    threshold: float = 0.8,
    method: str = "slic",
    n_segments: int | None = None,
    min_agreement: float = 0.6,
    min_coverage: float = 0.5,
    max_side: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Snap a teacher map to superpixels by voting of its confident pixels.

    In each superpixel the confident teacher pixels (confidence >= threshold) vote; when they
    cover at least `min_coverage` of the superpixel and the winning class holds at least
    `min_agreement` of the votes, the whole superpixel takes that class. Elsewhere pixels keep
    the thresholded teacher label (IGNORE_INDEX where unconfident).

    `max_side` caps the resolution the superpixels are computed at (see `superpixels`).

    Returns (refined uint8 HxW with 0..3 / 255, stats) where stats holds `segments`,
    `accepted_segments` and `changed_pixels` (pixels differing from the thresholded teacher map).
    """
    image = as_rgb(image)
    check_teacher_maps(labels, confidence, image)
    base = threshold_labels(labels, confidence, threshold)
    segments = superpixels(image, method=method, n_segments=n_segments, max_side=max_side).ravel()
    n_seg = int(segments.max()) + 1  # ids may have gaps: empty segments never vote

    flat_base = base.ravel()
    confident = flat_base != IGNORE_INDEX
    # votes[s, c] = confident pixels of class c in superpixel s, in one bincount.
    votes = np.bincount(
        segments[confident] * NUM_CLASSES + flat_base[confident].astype(np.int64),
        minlength=n_seg * NUM_CLASSES,
    ).reshape(n_seg, NUM_CLASSES)
    sizes = np.bincount(segments, minlength=n_seg)
    voters = votes.sum(axis=1)
    winner = votes.argmax(axis=1)
    share = votes.max(axis=1) / np.maximum(voters, 1)
    accepted = (voters > 0) & (voters >= min_coverage * sizes) & (share >= min_agreement)

    refined = np.where(accepted[segments], winner[segments], flat_base).astype(np.uint8).reshape(base.shape)
    stats = {
        "segments": int((sizes > 0).sum()),
        "accepted_segments": int(accepted.sum()),
        "changed_pixels": int((refined != base).sum()),
    }
    return refined, stats


def class_balanced_confidence(labels: np.ndarray, confidence: np.ndarray, threshold: float,
                              keep: float = 0.5) -> np.ndarray:
    """Rescale confidence so that every predicted class keeps at least ``keep`` of its pixels.

    A single threshold keeps mostly background: a teacher is most sure where nothing is. Class-
    balanced self-training (Zou et al., ECCV 2018) gives each class its own threshold, here the
    lower of ``threshold`` and the (1 - keep) quantile of that class's confidences in the image.
    Confidences are scaled so that passing a class's own threshold means passing ``threshold``,
    so every refiner keeps using one number. ``keep=0`` returns ``confidence`` unchanged.

    >>> labels = np.array([[0, 0, 1, 1]], np.uint8)
    >>> confidence = np.array([[0.99, 0.95, 0.6, 0.4]], np.float32)
    >>> class_balanced_confidence(labels, confidence, threshold=0.9, keep=0.5).astype(float).round(2).tolist()
    [[0.99, 0.95, 0.9, 0.6]]
    """
    if keep <= 0:
        return confidence
    check_teacher_maps(labels, confidence)
    adjusted = confidence.astype(np.float32, copy=True)
    for class_id in np.unique(labels):
        pixels = labels == class_id
        class_threshold = min(threshold, float(np.quantile(confidence[pixels], 1.0 - keep, method="higher")))
        if 0 < class_threshold < threshold:
            adjusted[pixels] = np.minimum(confidence[pixels] * (threshold / class_threshold), 1.0)
            # float32 rounding may put the quantile pixel itself a hair below ``threshold``
            kept = pixels & (confidence >= class_threshold)
            adjusted[kept] = np.maximum(adjusted[kept], np.float32(threshold))
    return adjusted
