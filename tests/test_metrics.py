import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from ssl_seg import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from ssl_seg.metrics import (
    confusion_matrix,
    format_table,
    micro_jaccard,
    per_class_dice,
    per_class_iou,
    summarize,
)

ALL = [0, 1, 2, 3]
MACERALS = [1, 2, 3]


def random_masks(seed: int, shape: tuple[int, ...], drop_true: int | None = None, drop_pred: int | None = None):
    """Truth and a partly-correct prediction; optionally one class missing from either."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(NUM_CLASSES, size=shape, p=[0.6, 0.1, 0.2, 0.1]).astype(np.uint8)
    pred = np.where(rng.random(shape) < 0.6, truth, rng.integers(0, NUM_CLASSES, size=shape)).astype(np.uint8)
    if drop_true is not None:
        truth[truth == drop_true] = 0
    if drop_pred is not None:
        pred[pred == drop_pred] = 0
    return truth, pred


CASES = [
    (0, (37, 53), None, None),
    (1, (128, 128), None, None),
    (2, (3, 20, 31), None, None),
    (3, (64, 90), 3, None),  # liptinite absent from truth
    (4, (64, 90), None, 1),  # inertinite never predicted
    (5, (50, 40), 2, 2),  # vitrinite absent from both
]


@pytest.mark.parametrize("seed,shape,drop_true,drop_pred", CASES)
def test_matches_sklearn(seed, shape, drop_true, drop_pred):
    truth, pred = random_masks(seed, shape, drop_true, drop_pred)
    cm = confusion_matrix(truth, pred)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, sk_confusion_matrix(truth.ravel(), pred.ravel(), labels=ALL))

    for labels in (ALL, MACERALS):
        expected = jaccard_score(truth.ravel(), pred.ravel(), labels=labels, average="micro")
        assert micro_jaccard(cm, labels) == pytest.approx(expected, abs=1e-12)

    # scikit-learn's jaccard has no NaN option: it says 0 where we say NaN (class absent from both).
    expected_per_class = jaccard_score(truth.ravel(), pred.ravel(), labels=ALL, average=None, zero_division=0)
    iou = per_class_iou(cm)
    absent = [c not in truth and c not in pred for c in ALL]
    np.testing.assert_array_equal(np.isnan(iou), absent)
    np.testing.assert_allclose(iou[~np.isnan(iou)], expected_per_class[~np.isnan(iou)])


@pytest.mark.parametrize("seed,shape,drop_true,drop_pred", CASES)
def test_dice_matches_f1(seed, shape, drop_true, drop_pred):
    from sklearn.metrics import f1_score

    truth, pred = random_masks(seed, shape, drop_true, drop_pred)
    expected = f1_score(truth.ravel(), pred.ravel(), labels=ALL, average=None, zero_division=np.nan)
    np.testing.assert_allclose(per_class_dice(confusion_matrix(truth, pred)), expected, equal_nan=True)


def test_absent_class_is_nan_only_when_absent_from_both():
    truth, pred = random_masks(5, (50, 40), drop_true=2, drop_pred=2)
    iou = per_class_iou(confusion_matrix(truth, pred))
    assert math.isnan(iou[2])
    assert not np.isnan(iou[[0, 1, 3]]).any()
    # Absent from truth but predicted: IoU is a real 0, not NaN.
    truth, pred = random_masks(3, (64, 90), drop_true=3)
    assert per_class_iou(confusion_matrix(truth, pred))[3] == 0.0


@pytest.mark.parametrize("seed", [0, 7])
def test_torch_and_numpy_agree(seed):
    truth, pred = random_masks(seed, (2, 33, 47))
    truth[0, :5] = IGNORE_INDEX
    cm_numpy = confusion_matrix(truth, pred)
    cm_torch = confusion_matrix(torch.from_numpy(truth), torch.from_numpy(pred).long())
    assert isinstance(cm_torch, torch.Tensor)
    assert cm_torch.dtype == torch.int64
    assert cm_torch.device == torch.device("cpu")
    np.testing.assert_array_equal(cm_torch.numpy(), cm_numpy)
    # Metrics accept the tensor directly.
    assert micro_jaccard(cm_torch, MACERALS) == micro_jaccard(cm_numpy, MACERALS)


@pytest.mark.parametrize("as_torch", [False, True])
def test_ignore_pixels_skipped(as_torch):
    truth, pred = random_masks(11, (40, 40))
    ignored = np.zeros_like(truth, dtype=bool)
    ignored[::3] = True
    truth_with_ignore = np.where(ignored, IGNORE_INDEX, truth).astype(np.uint8)
    if as_torch:
        cm = confusion_matrix(torch.from_numpy(truth_with_ignore), torch.from_numpy(pred)).numpy()
    else:
        cm = confusion_matrix(truth_with_ignore, pred)
    np.testing.assert_array_equal(cm, confusion_matrix(truth[~ignored], pred[~ignored]))
    assert cm.sum() == (~ignored).sum()


def test_all_ignored_gives_empty_matrix():
    truth = np.full((4, 4), IGNORE_INDEX, dtype=np.uint8)
    cm = confusion_matrix(truth, np.zeros((4, 4), dtype=np.uint8))
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES) and cm.sum() == 0
    assert micro_jaccard(cm, ALL) == 0.0


@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("bad_in", ["truth", "prediction"])
def test_out_of_range_values_refused(as_torch, bad_in):
    truth, pred = random_masks(0, (8, 8))
    if bad_in == "truth":
        truth[0, 0] = 7
    else:
        pred[0, 0] = 255
    if as_torch:
        truth, pred = torch.from_numpy(truth), torch.from_numpy(pred)
    with pytest.raises(ValueError, match="0..3"):
        confusion_matrix(truth, pred)


def test_shape_mismatch_refused():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8))


def test_summarize_keys_and_values():
    truth, pred = random_masks(2, (30, 30))
    cm = confusion_matrix(truth, pred)
    summary = summarize(cm)
    expected_keys = {"micro_jaccard_all", "micro_jaccard_macerals", "pixel_accuracy", "confusion_matrix"}
    expected_keys |= {f"iou/{name}" for name in CLASS_NAMES} | {f"dice/{name}" for name in CLASS_NAMES}
    assert set(summary) == expected_keys
    assert summary["pixel_accuracy"] == pytest.approx((truth == pred).mean())
    assert summary["micro_jaccard_macerals"] == pytest.approx(
        jaccard_score(truth.ravel(), pred.ravel(), labels=MACERALS, average="micro")
    )
    assert summary["confusion_matrix"] == cm.tolist()
    assert all(isinstance(v, int) for row in summary["confusion_matrix"] for v in row)


def test_format_table_rows_and_columns():
    truth, pred = random_masks(4, (20, 20), drop_pred=1)
    summaries = {
        "teacher": summarize(confusion_matrix(truth, pred)),
        "student": summarize(confusion_matrix(truth, truth)),
    }
    lines = format_table(summaries).splitlines()
    assert len(lines) == 3
    header = lines[0].split()
    assert header[:3] == ["run", "micro_jaccard_macerals", "micro_jaccard_all"]
    assert header[3:] == [f"iou/{name}" for name in CLASS_NAMES]
    assert lines[1].split()[0] == "teacher" and lines[2].split()[0] == "student"
    assert lines[2].split()[1:] == ["1.0000"] * 6
    assert f"{summaries['teacher']['micro_jaccard_macerals']:.4f}" in lines[1]
