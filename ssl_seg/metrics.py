"""Confusion-matrix metrics for maceral segmentation.

Everything is derived from one ``NUM_CLASSES x NUM_CLASSES`` confusion matrix (rows = truth,
columns = prediction), so metrics can be accumulated over any number of images or batches by
adding matrices, and the whole set is scored "micro" as the Stranger Sections 2 challenge does.

>>> import numpy as np
>>> truth = np.array([[0, 1], [2, 3]], dtype=np.uint8)
>>> pred = np.array([[0, 1], [2, 2]], dtype=np.uint8)
>>> cm = confusion_matrix(truth, pred)
>>> round(micro_jaccard(cm, [1, 2, 3]), 4)
0.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ssl_seg import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES

# The two scores the challenge discussion mixes up: with and without background.
ALL_LABELS = tuple(range(NUM_CLASSES))
MACERAL_LABELS = tuple(range(1, NUM_CLASSES))


def _is_torch_tensor(value: Any) -> bool:
    # Import-free check, so numpy-only callers never pay for importing torch.
    return type(value).__module__.startswith("torch") and hasattr(value, "device")


def confusion_matrix(y_true, y_pred, num_classes: int = NUM_CLASSES, ignore_index: int | None = IGNORE_INDEX):
    """Count (truth, prediction) pairs: ``cm[t, p]`` = pixels of class t predicted as p.

    Works on numpy arrays (returns ``np.int64``) and on torch tensors (returns an ``int64``
    tensor on the input's device, computed with ``bincount`` so it stays on the GPU).
    Pixels whose truth equals ``ignore_index`` are skipped. Any other value outside
    ``0..num_classes-1`` in truth or prediction raises ValueError.

    >>> confusion_matrix(np.array([0, 1, 255]), np.array([1, 1, 0]), num_classes=2).tolist()
    [[0, 1], [0, 1]]
    """
    if tuple(y_true.shape) != tuple(y_pred.shape):
        raise ValueError(
            f"truth shape {tuple(y_true.shape)} differs from prediction shape {tuple(y_pred.shape)}: "
            "compare masks of the same image size"
        )
    if _is_torch_tensor(y_true) or _is_torch_tensor(y_pred):
        return _confusion_matrix_torch(y_true, y_pred, num_classes, ignore_index)
    return _confusion_matrix_numpy(np.asarray(y_true), np.asarray(y_pred), num_classes, ignore_index)


def _out_of_range_message(what: str, low, high, num_classes: int) -> str:
    return f"{what} holds values {low}..{high}, expected class codes 0..{num_classes - 1}"


def _confusion_matrix_numpy(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, ignore_index: int | None
) -> np.ndarray:
    y_true = y_true.ravel()
    y_pred = y_pred.ravel()
    if ignore_index is not None:
        keep = y_true != ignore_index
        if not keep.all():
            y_true, y_pred = y_true[keep], y_pred[keep]
    if y_true.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    for what, values in (("truth", y_true), ("prediction", y_pred)):
        low, high = values.min(), values.max()
        if low < 0 or high >= num_classes:
            raise ValueError(_out_of_range_message(what, low, high, num_classes))
    # A small unsigned index keeps the multiply cheap on uint8 masks; bincount widens it.
    index_dtype = np.uint16 if num_classes * num_classes <= np.iinfo(np.uint16).max else np.int64
    flat = y_true.astype(index_dtype) * index_dtype(num_classes) + y_pred.astype(index_dtype)
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _confusion_matrix_torch(y_true, y_pred, num_classes: int, ignore_index: int | None):
    import torch

    y_true = torch.as_tensor(y_true).reshape(-1)
    y_pred = torch.as_tensor(y_pred, device=y_true.device).reshape(-1)
    y_true = y_true.long()
    y_pred = y_pred.long()
    if ignore_index is not None:
        keep = y_true != ignore_index
        y_true, y_pred = y_true[keep], y_pred[keep]
    # One host sync for validation; bincount on CUDA syncs for its output size anyway.
    bad = (y_true < 0) | (y_true >= num_classes) | (y_pred < 0) | (y_pred >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"truth/prediction hold values outside class codes 0..{num_classes - 1} "
            f"(truth {int(y_true.min())}..{int(y_true.max())}, prediction {int(y_pred.min())}..{int(y_pred.max())})"
        )
    counts = torch.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).to(torch.int64)


def _as_numpy_matrix(cm) -> np.ndarray:
    if _is_torch_tensor(cm):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square 2-D, got shape {cm.shape}")
    return cm


def micro_jaccard(cm, labels: Sequence[int]) -> float:
    """Micro-averaged Jaccard over ``labels``, identical to scikit-learn's
    ``jaccard_score(y_true, y_pred, labels=labels, average="micro")``.

    For each label l: TP = cm[l, l], FP = column sum - TP, FN = row sum - TP, where the
    sums run over *all* classes (a background pixel predicted as inertinite is a false
    positive of inertinite even when background is not among the labels). The score is
    sum(TP) / sum(TP + FP + FN); 0.0 when that denominator is 0, as scikit-learn returns.

    >>> micro_jaccard(np.array([[5, 1], [0, 2]]), [1])
    0.6666666666666666
    """
    cm = _as_numpy_matrix(cm)
    labels = list(labels)
    true_positives = np.diag(cm)[labels]
    union = cm.sum(axis=1)[labels] + cm.sum(axis=0)[labels] - true_positives
    denominator = int(union.sum())
    return float(true_positives.sum()) / denominator if denominator else 0.0


def per_class_iou(cm) -> np.ndarray:
    """IoU per class (float64); NaN for a class absent from both truth and prediction."""
    cm = _as_numpy_matrix(cm)
    true_positives = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=1) + cm.sum(axis=0) - true_positives
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positives / np.maximum(union, 1), np.nan)


def per_class_dice(cm) -> np.ndarray:
    """Dice (F1) per class (float64); NaN for a class absent from both truth and prediction."""
    cm = _as_numpy_matrix(cm)
    true_positives = np.diag(cm).astype(np.float64)
    total = cm.sum(axis=1) + cm.sum(axis=0)
    return np.where(total > 0, 2.0 * true_positives / np.maximum(total, 1), np.nan)


def pixel_accuracy(cm) -> float:
    """Share of counted pixels whose prediction equals the truth (0.0 for an empty matrix)."""
    cm = _as_numpy_matrix(cm)
    total = int(cm.sum())
    return float(np.trace(cm)) / total if total else 0.0


def summarize(cm) -> dict[str, Any]:
    """All scores of one confusion matrix, as a flat JSON-ready dict.

    Keys: ``micro_jaccard_all`` (labels 0..3, background counted), ``micro_jaccard_macerals``
    (labels 1..3, the maceral-only score), ``pixel_accuracy``, ``iou/<class>`` and
    ``dice/<class>`` for every name in ``CLASS_NAMES`` (NaN when the class is absent from
    both truth and prediction), and ``confusion_matrix`` as nested lists of ints.
    """
    cm = _as_numpy_matrix(cm)
    if cm.shape != (NUM_CLASSES, NUM_CLASSES):
        raise ValueError(f"summarize expects a {NUM_CLASSES}x{NUM_CLASSES} confusion matrix, got {cm.shape}")
    summary: dict[str, Any] = {
        "micro_jaccard_all": micro_jaccard(cm, ALL_LABELS),
        "micro_jaccard_macerals": micro_jaccard(cm, MACERAL_LABELS),
        "pixel_accuracy": pixel_accuracy(cm),
    }
    for name, value in zip(CLASS_NAMES, per_class_iou(cm)):
        summary[f"iou/{name}"] = float(value)
    for name, value in zip(CLASS_NAMES, per_class_dice(cm)):
        summary[f"dice/{name}"] = float(value)
    summary["confusion_matrix"] = cm.tolist()
    return summary


def _format_number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.4f}"


def format_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table comparing runs: one row per run name, columns
    ``micro_jaccard_macerals``, ``micro_jaccard_all`` and the IoU of each class.

    >>> print(format_table({"teacher": summarize(np.eye(4, dtype=int))}))  # doctest: +NORMALIZE_WHITESPACE
    run     micro_jaccard_macerals micro_jaccard_all iou/background iou/inertinite iou/vitrinite iou/liptinite
    teacher 1.0000                 1.0000            1.0000         1.0000         1.0000        1.0000
    """
    columns = ["micro_jaccard_macerals", "micro_jaccard_all"] + [f"iou/{name}" for name in CLASS_NAMES]
    rows = [["run", *columns]]
    for run_name, summary in summaries.items():
        rows.append([str(run_name), *(_format_number(summary.get(column)) for column in columns)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
