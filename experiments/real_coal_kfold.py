"""Supervised versus online semi-supervised training on the real coal maceral images, k-fold, at equal steps.

    python experiments/real_coal_kfold.py --folds 3 --steps 300 --seeds 0 --out runs/real_coal_kfold
    python experiments/real_coal_kfold.py --smoke          # seconds: checks that it still runs

The data are the few real images the project has offline (``../shared/data/real/``, never committed):
the 6 labeled ``coal_maceral/`` photomicrographs and, as the unlabeled set, the reflected-light and
fluorescence images of ``reflected_light_unlabeled/`` and ``ss1_unlabeled/``. Each fold holds out
every ``--folds``-th labeled image; both arms train from the same initialisation on the rest:

- ``supervised``: ``finetune`` for ``--steps`` steps of ``--batch-size`` labeled crops;
- ``<method>`` (default copy_paste): ``pretrain`` online for ``--steps`` steps of as many labeled plus
  as many unlabeled crops.

Each arm's last step predicts the held-out images; the score is the SS2 metric on the maceral classes
(foreground micro Jaccard), pooled over the folds' confusion matrices, per seed. Finished folds are
kept: rerunning with the same ``--out`` resumes. The masks are rough and partly threshold-like
(the folder's README), so these numbers say whether the code runs and which way it leans on real
images, not what a curated set would give.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

from ssl_seg import NUM_CLASSES
from ssl_seg.config import load_config
from ssl_seg.data.io import save_json
from ssl_seg.evaluate import evaluate_dirs
from ssl_seg.metrics import micro_jaccard
from ssl_seg.predict import predict_folder
from ssl_seg.train.loop import train

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
UNLABELED = ("reflected_light_unlabeled", "ss1_unlabeled")


def fold_dataset(real: Path, root: Path, fold: int, folds: int) -> list[str]:
    """A generic-layout dataset of fold ``fold``: the other labeled images, the unlabeled ones and, as
    ``test/`` with its masks in ``test_masks/``, the held-out ones; returns the held-out ids."""
    images = sorted((real / "coal_maceral" / "images").iterdir())
    held_out = images[fold::folds]
    if root.is_dir():
        return [p.stem for p in held_out]
    temporary = root.with_name(root.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    for sub in ("images", "masks", "unlabeled", "test", "test_masks"):
        (temporary / sub).mkdir(parents=True)
    for image in images:
        mask = real / "coal_maceral" / "masks" / f"{image.stem}.png"
        images_to, masks_to = ("test", "test_masks") if image in held_out else ("images", "masks")
        shutil.copy(image, temporary / images_to / image.name)
        shutil.copy(mask, temporary / masks_to / mask.name)
    for folder in UNLABELED:
        for path in sorted((real / folder).iterdir()):
            shutil.copy(path, temporary / "unlabeled" / f"{folder}_{path.name}")
    temporary.rename(root)
    return [p.stem for p in held_out]


def arm_confusion(data: Path, run: Path, cfg, mode: str) -> np.ndarray:
    """Train one arm of one fold (unless done); the confusion matrix of its last step on the held-out images."""
    result = run / "confusion.json"
    if not result.is_file():
        train(cfg, data, run, mode=mode, progress=False, resume=True)
        predict_folder(run / "latest.pth", data / "test", run / "pred", tile_size=256, device="cpu", workers=0,
                       progress=False)
        save_json(result, {"confusion": evaluate_dirs(run / "pred", data / "test_masks")["confusion_matrix"]})
    return np.array(json.loads(result.read_text())["confusion"], dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, default=REAL, help="the real-data folder (default ../shared/data/real)")
    parser.add_argument("--out", type=Path, default=Path("runs/real_coal_kfold"))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--method", default="copy_paste")
    parser.add_argument("--model", default="unet-small")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--smoke", action="store_true", help="a tiny budget, to check the script runs")
    args = parser.parse_args()
    if not (args.real / "coal_maceral" / "images").is_dir():
        raise SystemExit(f"{args.real}: no coal_maceral/images/ there; point --real at the real-data folder")
    if args.smoke:
        args.steps, args.seeds, args.tile_size, args.batch_size = 2, [0], 64, 2
    labeled = len(list((args.real / "coal_maceral" / "images").iterdir()))
    if not 2 <= args.folds <= labeled:
        raise SystemExit(f"--folds {args.folds}: must lie between 2 and the {labeled} labeled images")
    # finished folds are reused: only under the settings that made them
    made_by = {k: str(v) for k, v in vars(args).items() if k not in ("seeds", "out")}
    settings = args.out / "settings.json"
    if settings.is_file() and json.loads(settings.read_text()) != made_by:
        raise SystemExit(f"{args.out} holds folds made with other settings ({settings}); use another --out")
    save_json(settings, made_by)
    common = {"model": args.model, "tile_size": args.tile_size, "lr": args.lr, "val_fraction": 0.0,
              "num_workers": 0, "device": "cpu", "warmup_steps": max(1, args.steps // 20), "log_every": 10,
              "val_every": 10**9, "steps": args.steps}
    arms = ("supervised", args.method)
    scores: dict[int, dict[str, float]] = {}
    for seed in args.seeds:
        totals = {arm: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64) for arm in arms}
        for fold in range(args.folds):
            data = args.out / f"fold{fold}" / "data"
            held_out = fold_dataset(args.real, data, fold, args.folds)
            run = args.out / f"fold{fold}" / f"seed{seed}"
            supervised = load_config(None, {**common, "seed": seed, "batch_size": args.batch_size})
            semi = load_config(None, {**common, "seed": seed, "batch_size": 2 * args.batch_size, "labeled_ratio": 0.5,
                                      "method": args.method, "rampup_fraction": 0.2})
            for arm, cfg, mode in (("supervised", supervised, "finetune"), (args.method, semi, "pretrain")):
                totals[arm] += arm_confusion(data, run / arm, cfg, mode)
            print(f"seed {seed} fold {fold} (held out {', '.join(held_out)}) done", flush=True)
        scores[seed] = {arm: micro_jaccard(totals[arm], list(range(1, NUM_CLASSES))) for arm in arms}
        print(f"seed {seed}: " + ", ".join(f"{arm} {value:.4f}" for arm, value in scores[seed].items()), flush=True)
    gains = [100 * (row[args.method] - row["supervised"]) for row in scores.values()]
    error = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else float("nan")
    text = (f"{args.folds}-fold, {args.steps} steps, pooled maceral micro Jaccard per seed: "
            + "; ".join(f"seed {s}: supervised {r['supervised']:.4f}, {args.method} {r[args.method]:.4f}"
                        for s, r in scores.items())
            + f"\n{args.method} - supervised: " + ", ".join(f"{g:+.1f}" for g in gains)
            + f" points; mean {statistics.mean(gains):+.2f} ± {error:.2f} (s.e.)")
    print(text)
    save_json(args.out / "results.json", {"args": {k: str(v) for k, v in vars(args).items()}, "scores": scores,
                                          "table": text, "command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
