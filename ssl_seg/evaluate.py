"""Score a folder of predicted masks against a folder of labels, as the challenge does.

Predictions are ``<id>_pred.npy`` (2-D integer, values 0..3). Each is paired with the label
``<id>_gt.npy``, ``<id>.npy`` or ``<id>.png`` / ``.bmp`` / ``.tif`` in the labels folder.
All pixels of all images go into one confusion matrix, so the scores are micro over the
whole set (scikit-learn ``jaccard_score(average="micro")`` on the concatenated pixels).

>>> result = evaluate_dirs("preds/", "train/labels/")  # doctest: +SKIP
>>> print(format_report(result))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ssl_seg import CLASS_NAMES, NUM_CLASSES
from ssl_seg.data.io import DataError, read_mask, read_prediction
from ssl_seg.data.layout import BINARY_CLASSES_CSV, masks_by_id
from ssl_seg.data.layout import read_binary_classes as read_binary_classes_csv  # (csv_path, known_ids)
from ssl_seg.metrics import (
    ALL_LABELS,
    MACERAL_LABELS,
    confusion_matrix,
    micro_jaccard,
    summarize,
)

PRED_SUFFIX = "_pred.npy"
MAX_LISTED_IDS = 5


def format_ids(ids: list[str]) -> str:
    """The first few ids of a list for an error message: ``a, b, c, d, e and 3 more``."""
    shown = ", ".join(sorted(ids)[:MAX_LISTED_IDS])
    more = len(ids) - MAX_LISTED_IDS
    return shown + (f" and {more} more" if more > 0 else "")


def find_predictions(pred_dir: str | Path) -> dict[str, Path]:
    """Map image id -> ``<id>_pred.npy`` in ``pred_dir``; DataError for a missing or empty folder."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(
            f"{pred_dir}: prediction folder not found; fix: pass the folder holding <id>{PRED_SUFFIX} files"
        )
    predictions = {
        path.name[: -len(PRED_SUFFIX)]: path
        for path in sorted(pred_dir.iterdir())
        if path.is_file() and not path.name.startswith(".") and path.name.endswith(PRED_SUFFIX)
    }
    if not predictions:
        raise DataError(
            f"{pred_dir}: no <id>{PRED_SUFFIX} files found; fix: pass the folder of predictions written by "
            f"ssl-seg predict (<id>{PRED_SUFFIX}: 2-D integer arrays with class codes 0..3)"
        )
    return predictions


def find_labels(labels_dir: str | Path, image_ids: set[str] = frozenset()) -> dict[str, Path]:
    """Map image id -> label file in ``labels_dir`` (``<id>_gt.npy``, ``<id>.npy``, ``<id>.png`` ...);
    ``image_ids`` (the predictions' ids) may themselves end in ``_gt``."""
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise DataError(f"{labels_dir}: label folder not found; pass the folder holding <id>_gt.npy or <id>.png masks")
    # The data layer's matching, so evaluation pairs files exactly as training does.
    masks = masks_by_id(labels_dir, image_ids)
    inside = [labels_dir / sub for sub in ("masks", "labels", "train/labels", "test_answers")
              if (labels_dir / sub).is_dir()]
    if not masks and inside:  # a dataset root, as --data takes
        raise DataError(f"{labels_dir}: no masks in this folder itself; fix: pass the folder of masks, "
                        f"e.g. {inside[0]}")
    return {image_id: path for image_id, path in masks.items() if not path.name.endswith(PRED_SUFFIX)}


def read_binary_classes(labels_dir: str | Path, label_ids: set[str]) -> dict[str, int]:
    """Per-image class of binary (0/255) masks from ``binary_classes.csv`` (lines ``id,class``)
    in ``labels_dir``; {} when there is none. Parsed by the data layer, so training and
    evaluation read the file the same way."""
    csv_path = Path(labels_dir) / BINARY_CLASSES_CSV
    if not csv_path.is_file():
        return {}
    return read_binary_classes_csv(csv_path, label_ids)


def evaluate_dirs(pred_dir: str | Path, labels_dir: str | Path, binary_class: int | None = None) -> dict[str, Any]:
    """Score every ``<id>_pred.npy`` in ``pred_dir`` against its label in ``labels_dir``.

    ``binary_class`` is the class of 0/255 masks for the whole folder; a
    ``binary_classes.csv`` (``id,class``) in ``labels_dir`` sets it per image and wins.
    Returns ``summarize(cm)`` of the set-wide confusion matrix, plus ``num_images`` and
    ``per_image`` (``{id: {"micro_jaccard_macerals", "micro_jaccard_all", "pixels", "maceral_pixels"}}``).
    Raises DataError for an empty folder, unpaired files, bad values or mismatched shapes.
    """
    predictions = find_predictions(pred_dir)
    labels = find_labels(labels_dir, set(predictions))
    missing_labels = [image_id for image_id in predictions if image_id not in labels]
    if missing_labels:
        raise DataError(
            f"{labels_dir}: no label for {len(missing_labels)} prediction(s): {format_ids(missing_labels)}; "
            "add <id>_gt.npy / <id>.png labels or remove those predictions"
        )
    missing_predictions = [image_id for image_id in labels if image_id not in predictions]
    if missing_predictions:
        raise DataError(
            f"{pred_dir}: no prediction for {len(missing_predictions)} label(s): {format_ids(missing_predictions)}; "
            f"predict those images (<id>{PRED_SUFFIX}) or score against a labels folder without them"
        )
    binary_classes = read_binary_classes(labels_dir, set(labels))

    total = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    per_image: dict[str, dict[str, float]] = {}
    for image_id, pred_path in predictions.items():
        label_path = labels[image_id]
        truth = read_mask(label_path, binary_classes.get(image_id, binary_class))
        pred = read_prediction(pred_path)
        if truth.shape != pred.shape:
            raise DataError(
                f"{pred_path}: prediction shape {pred.shape} differs from label {label_path} shape {truth.shape}; "
                "predict at the label's full resolution"
            )
        cm = confusion_matrix(truth, pred)
        total += cm
        per_image[image_id] = {
            "micro_jaccard_macerals": micro_jaccard(cm, MACERAL_LABELS),
            "micro_jaccard_all": micro_jaccard(cm, ALL_LABELS),
            "pixels": int(cm.sum()),
            # pixels that are a maceral in truth or prediction; 0 means the image scores 0 with nothing wrong
            "maceral_pixels": int(cm.sum() - cm[0, 0]),
        }
    result = summarize(total)
    result["num_images"] = len(per_image)
    result["per_image"] = per_image
    return result


def _cell(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def format_report(result: dict[str, Any], worst: int = 5) -> str:
    """Human-readable text of an ``evaluate_dirs`` result: overall scores, per-class IoU/Dice,
    the confusion matrix with class names, and the ``worst`` lowest-scoring images."""
    lines = [
        f"images: {result.get('num_images', '?')}",
        f"micro Jaccard, macerals only (labels 1,2,3): {result['micro_jaccard_macerals']:.4f}",
        f"micro Jaccard, background counted (labels 0-3): {result['micro_jaccard_all']:.4f}",
        f"pixel accuracy: {result['pixel_accuracy']:.4f}",
        "",
    ]
    name_width = max(len(name) for name in CLASS_NAMES)
    lines.append(f"{'class'.ljust(name_width)}  {'IoU':>6}  {'Dice':>6}")
    for name in CLASS_NAMES:
        lines.append(f"{name.ljust(name_width)}  {_cell(result[f'iou/{name}']):>6}  {_cell(result[f'dice/{name}']):>6}")

    matrix = result["confusion_matrix"]
    cell_width = max(name_width, *(len(str(v)) for row in matrix for v in row))
    lines += ["", "confusion matrix (rows = truth, columns = prediction, pixels):"]
    lines.append(" " * name_width + "  " + "  ".join(name.rjust(cell_width) for name in CLASS_NAMES))
    for name, row in zip(CLASS_NAMES, matrix):
        lines.append(name.ljust(name_width) + "  " + "  ".join(str(v).rjust(cell_width) for v in row))

    per_image = result.get("per_image") or {}
    if per_image and worst > 0:
        # images without any maceral in truth or prediction score 0 yet hold no error: not listed
        scored = [item for item in per_image.items() if item[1].get("maceral_pixels", 1)]
        ranked = sorted(scored, key=lambda item: item[1]["micro_jaccard_macerals"])[:worst]
        lines += ["", f"lowest micro Jaccard (macerals) of {len(per_image)} images:"]
        lines += [f"  {image_id}  {scores['micro_jaccard_macerals']:.4f}" for image_id, scores in ranked]
    return "\n".join(lines)
