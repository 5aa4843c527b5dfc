"""How right are pseudo-labels? Scores a ``pseudo-label`` folder against the procedural truth.

    python experiments/pseudo_label_quality.py --data demo_out/data --seed 0 --pseudo demo_out/pseudo

The generator can re-render the masks of the unlabeled scenes (each scene is a pure function of
seed, split and index); they are written to ``DATA/train/unlabeled_truth/`` and compared with the
pseudo masks, pixels marked 255 (not confident) left out. Printed per class: the share of
pseudo-labelled pixels, the share in truth, precision, and coverage (share of the class's true
pixels that received it), plus the foreground micro Jaccard over the labelled pixels, and where
each true class's labelled pixels went (a row of the confusion matrix, as shares).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ssl_seg import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from ssl_seg.data.io import image_size, read_mask, save_json
from ssl_seg.data.layout import list_images
from ssl_seg.data.synthetic import dataset_magnification, write_dataset
from ssl_seg.metrics import MACERAL_LABELS, micro_jaccard


def quality(confusion: np.ndarray, truth_counts: np.ndarray) -> dict:
    """``confusion[t, p]`` over pseudo-labelled pixels; ``truth_counts`` over all pixels."""
    predicted = confusion.sum(0)
    correct = np.diag(confusion)
    return {
        "labelled_fraction": float(confusion.sum() / truth_counts.sum()),
        "confusion": confusion.tolist(),  # [truth][pseudo] pixel counts
        "foreground_micro_jaccard": micro_jaccard(confusion, MACERAL_LABELS),
        "classes": {name: {"share_pseudo": float(predicted[c] / max(predicted.sum(), 1)),
                           "share_truth": float(truth_counts[c] / truth_counts.sum()),
                           "precision": float(correct[c] / max(predicted[c], 1)),
                           "coverage": float(correct[c] / max(truth_counts[c], 1))}
                    for c, name in enumerate(CLASS_NAMES)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a procedural dataset (ssl-seg synth or demo)")
    parser.add_argument("--seed", type=int, required=True, help="the seed it was written with")
    parser.add_argument("--pseudo", required=True, help="folder written by ssl-seg pseudo-label")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()

    data = Path(args.data)
    counts = {split: len(list_images(data / folder)) if (data / folder).is_dir() else 0
              for split, folder in (("labeled", "train/labeled"), ("unlabeled", "train/unlabeled"), ("test", "test"))}
    size = image_size(list_images(data / "train" / "unlabeled")[0])
    write_dataset(data, counts["labeled"], counts["unlabeled"], counts["test"], size, args.seed, progress=False,
                  unlabeled_truth=True, magnification=dataset_magnification(data) or 1.0)

    manifest = json.loads((Path(args.pseudo) / "manifest.json").read_text())
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    truth_counts = np.zeros(NUM_CLASSES, np.int64)
    for image_id, entry in sorted(manifest["images"].items()):
        truth = np.load(data / "train" / "unlabeled_truth" / f"{image_id}_gt.npy")
        pseudo = read_mask(Path(args.pseudo) / entry["mask"], pseudo=True)
        kept = pseudo != IGNORE_INDEX
        confusion += np.bincount(truth[kept].astype(np.int64) * NUM_CLASSES + pseudo[kept],
                                 minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
        truth_counts += np.bincount(truth.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    result = {"images": len(manifest["images"]), "pseudo": str(args.pseudo),
              "settings": {k: manifest.get(k) for k in ("teacher", "refiner", "threshold", "tta")},
              **quality(confusion, truth_counts)}

    print(f"{result['images']} images, settings {result['settings']}")
    print(f"labelled (confident) pixels: {result['labelled_fraction']:.3f}; foreground micro Jaccard over them: "
          f"{result['foreground_micro_jaccard']:.4f}")
    print("class        share(pseudo)  share(truth)  precision  coverage")
    for name, row in result["classes"].items():
        print(f"{name:<12} {row['share_pseudo']:13.3f}  {row['share_truth']:12.3f}  {row['precision']:9.3f}  "
              f"{row['coverage']:8.3f}")
    print("labelled pixels of each true class (rows) by pseudo class (columns):")
    print(" " * 12 + "".join(f"{name:>12}" for name in CLASS_NAMES))
    for name, row in zip(CLASS_NAMES, confusion):
        print(f"{name:<12}" + "".join(f"{share:12.3f}" for share in row / max(row.sum(), 1)))
    if args.json:
        save_json(args.json, result)


if __name__ == "__main__":
    main()
