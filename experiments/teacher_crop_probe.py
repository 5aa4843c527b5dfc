"""Which classes a trained arm's EMA weights predict, and keep at the threshold, on the unlabeled training crops.

    python experiments/teacher_crop_probe.py --run runs/online_ssl/seed3/supervised_1x

Reads the arm's ``ema.pth`` (``--weights``) and its seed's procedural data (``<run>/../data``, with ``unlabeled_truth/``),
draws ``--batches`` batches of unlabeled crops as ``pretrain`` does, and prints each class's share of: the
truth, the argmax on the raw crops, the argmax on their geometric + weak views (the online teacher's input),
and the pixels of those views kept at ``--threshold``; then the precision of the kept pixels of each class (the
share whose truth is that class; null where none is kept). A class that the argmax holds but the kept pixels do
not is one that the threshold, not the teacher's ranking, removes from the pseudo-labels; a low precision, one
whose pseudo-labels teach the teacher's mistakes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ssl_seg import IGNORE_INDEX, NUM_CLASSES
from ssl_seg.augment import TrainAugment
from ssl_seg.config import load_config
from ssl_seg.runtime import workers_released_on_exit
from ssl_seg.train.checkpoint import load_checkpoint, model_from_checkpoint
from ssl_seg.train.data import crop_batches, training_sets
from ssl_seg.train.methods.base import confident_pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="an arm's folder of online_ssl_benchmark.py")
    parser.add_argument("--weights", default="ema.pth", help="checkpoint in --run (default: the EMA weights)")
    parser.add_argument("--batches", type=int, default=25)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--class-thresholds", default="fixed", choices=("fixed", "teacher_mean", "class_share"),
                        help="the rule that keeps pixels at --threshold, as the config key class_thresholds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = load_checkpoint(args.run / args.weights)
    model = model_from_checkpoint(state, args.run / args.weights).eval()
    saved = {key: state["config"][key] for key in ("batch_size", "tile_size", "labeled_ratio", "steps", "seed")}
    # enough draws for --batches, however short the arm's own run was
    cfg = load_config(None, {**saved, "steps": max(saved["steps"], args.batches), "num_workers": 0})
    sets = training_sets(cfg, args.run.parent / "data", "pretrain", say=False)
    augment = TrainAugment()
    counts = {name: np.zeros(NUM_CLASSES) for name in ("truth", "raw argmax", "view argmax", "view kept")}
    kept_right = np.zeros(NUM_CLASSES)

    def add(name, labels):
        counts[name] += np.bincount(labels.flatten().numpy(), minlength=NUM_CLASSES)[:NUM_CLASSES]

    torch.manual_seed(0)
    with workers_released_on_exit() as released, torch.no_grad():
        batches = crop_batches(sets.unlabeled, cfg, min(4, len(sets.unlabeled)), 0, True, 0, 1, False, released)
        for _ in range(args.batches):
            batch = next(batches)
            images, truth = batch["image"].float() / 255, batch["truth"]
            add("truth", truth[truth != IGNORE_INDEX])
            add("raw argmax", model(images).argmax(dim=1))
            views, _, inside, view_truth = augment.geometric(images, batch["mask"], batch["valid"].float(), truth)
            confidence, label = model(augment.weak(views).clamp_(0, 1)).softmax(dim=1).max(dim=1)
            add("view argmax", label[inside > 0])
            kept = confident_pixels(confidence, label, args.threshold, class_thresholds=args.class_thresholds,
                                    inside=inside) > 0
            kept &= (inside > 0) & (view_truth != IGNORE_INDEX)
            add("view kept", label[kept])
            kept_right += np.bincount(label[kept & (label == view_truth)].numpy(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    print(f"{args.run}: class shares (background, inertinite, vitrinite, liptinite)")
    for name, count in counts.items():
        print(f"  {name:12s} {np.round(count / max(count.sum(), 1), 4).tolist()}")
    precision = [round(float(r / k), 4) if k else None for r, k in zip(kept_right, counts["view kept"])]
    print(f"  {'kept precision':12s} {json.dumps(precision)}")


if __name__ == "__main__":
    main()
