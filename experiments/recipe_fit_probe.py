"""How well one training recipe fits its own labeled images and how well it generalises: one run, two scores.

    python experiments/recipe_fit_probe.py --seed 0 --name noaug --augment none
    python experiments/recipe_fit_probe.py --seed 0 --name unet --set model=unet
    python experiments/recipe_fit_probe.py --seed 0 --name oracle --mode pretrain --set oracle_pseudo_labels=true
    python experiments/recipe_fit_probe.py --seed 0 --name all_truth --all-truth --steps 1200

Trains on the procedural dataset that ``online_ssl_benchmark.py`` writes for the same seed (it must exist:
run the benchmark first, or pass ``--data``), with the benchmark's settings (``unet-small``, batches of 4
crops of 128, lr 2e-3, last step; ``--mode pretrain``: copy_paste with 4 labeled + 4 unlabeled crops), then
scores the last step by the maceral micro Jaccard on the labeled training images (fit) and on the test
scenes (generalisation). ``--augment`` ablates the training augmentation: ``flips`` keeps the 8 flip/rot90
symmetries only, ``none`` turns geometry and colour jitter off. ``--all-truth`` trains on the labeled and the
unlabeled scenes with their true masks (``train/unlabeled_truth/``, linked into ``<out>/all_truth_s<seed>/``):
the fully supervised ceiling. One JSON line per run is appended to
``<out>/results.jsonl``. A diagnostic of the recipe (experiments/RESULTS.md), not a benchmark: one seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ssl_seg.augment as augment
from ssl_seg import CLASS_NAMES
from ssl_seg.config import load_config
from ssl_seg.evaluate import evaluate_dirs
from ssl_seg.predict import predict_folder
from ssl_seg.train.loop import train

from online_ssl_benchmark import arm_settings, argument_parser  # experiments/: the benchmark's recipe


class NoGeometry(torch.nn.Module):
    """GeometricAugment's interface, changing nothing."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, images, masks, *extra):
        return (images, masks, *extra) if extra else (images, masks)


class FlipsOnly(augment.GeometricAugment):
    """The 8 flip/rot90 symmetries, no rotation by other angles and no scaling."""

    def __init__(self, *args, **kwargs):
        super().__init__(degrees=0.0, scale=(1.0, 1.0))


def ablate_augmentation(kind: str) -> None:
    """Replace the training augmentation before the loop builds it (this process only)."""
    if kind == "full":
        return
    augment.photometric = lambda strength="weak": torch.nn.Identity()
    augment.GeometricAugment = NoGeometry if kind == "none" else FlipsOnly


def all_truth_dataset(data: Path, out: Path) -> Path:
    """``data``'s labeled and unlabeled scenes, all with their true masks, as one labeled set (symlinks)."""
    for folder in ("train/labeled", "train/labels"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    links = [(data / "test", out / "test"), (data / "test_answers", out / "test_answers")]
    for images, masks in (("labeled", "labels"), ("unlabeled", "unlabeled_truth")):
        links += [(p, out / "train" / "labeled" / p.name) for p in (data / "train" / images).glob("*.JPG")]
        links += [(p, out / "train" / "labels" / p.name) for p in (data / "train" / masks).glob("*_gt.npy")]
    for source, link in links:
        if not link.exists():
            link.symlink_to(source.resolve())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", required=True, help="the run's folder under --out: <name>_s<seed>")
    parser.add_argument("--data", help="default: runs/online_ssl/seed<seed>/data")
    parser.add_argument("--out", default="runs/recipe_fit")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--mode", choices=("finetune", "pretrain"), default="finetune")
    parser.add_argument("--augment", choices=("full", "flips", "none"), default="full")
    parser.add_argument("--all-truth", action="store_true", help="train on the unlabeled scenes' truth too")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config keys")
    args = parser.parse_args()
    data = Path(args.data or f"runs/online_ssl/seed{args.seed}/data")
    run = Path(args.out) / f"{args.name}_s{args.seed}"
    if args.all_truth:
        data = all_truth_dataset(data, Path(args.out) / f"all_truth_s{args.seed}")
    ablate_augmentation(args.augment)
    benchmark = argument_parser().parse_args(["--steps", str(args.steps)])  # the benchmark's defaults
    settings = arm_settings(benchmark, args.seed, args.steps, "copy_paste" if args.mode == "pretrain" else None)
    cfg = load_config(None, args.set, base=load_config(None, settings))
    tick = time.perf_counter()
    train(cfg, data, run, mode=args.mode, progress=False, resume=True)
    out = {"name": args.name, "seed": args.seed, "steps": args.steps, "mode": args.mode, "augment": args.augment,
           "all_truth": args.all_truth, "set": args.set, "train_seconds": round(time.perf_counter() - tick)}
    for split, images, labels in [("train", data / "train" / "labeled", data / "train" / "labels"),
                                  ("test", data / "test", data / "test_answers")]:
        predict_folder(run / "latest.pth", images, run / f"pred_{split}", tile_size=256, device="cpu", workers=0,
                       progress=False)
        summary = evaluate_dirs(run / f"pred_{split}", labels)
        out[split] = round(summary["micro_jaccard_macerals"], 4)
        out[f"{split}_iou"] = {name: round(summary[f"iou/{name}"], 3) for name in CLASS_NAMES}
    print(json.dumps(out))
    with open(Path(args.out) / "results.jsonl", "a") as results:
        results.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
