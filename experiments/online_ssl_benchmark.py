"""Supervised versus online semi-supervised training from scratch, paired by seed, on the procedural data.

    python experiments/online_ssl_benchmark.py --seeds 0 1 2 --steps 600 --out runs/online_ssl
    python experiments/online_ssl_benchmark.py --smoke          # seconds: checks that it still runs

Each seed writes its own procedural dataset (``--labeled`` labeled, ``--unlabeled`` unlabeled and
``--test`` test scenes at magnification 2.5; ``--labeled-modes alternate`` lights the labeled ones white and
fluorescent in turn) and trains, from the same random initialisation:

- ``supervised@Kx``: ``finetune`` on the labeled masks for K times ``--steps`` (``--budgets``, default 1 2),
  batches of ``--batch-size`` labeled crops;
- ``<method>`` (``--methods``: unimatch, copy_paste, mean_teacher): ``pretrain`` online (no
  pseudo-labels) for ``--steps``, batches of ``--batch-size`` labeled plus as many unlabeled crops
  (``labeled_ratio`` 0.5 of twice the batch). Each prints its online pseudo-labels' health by quarter
  of the run (maceral Jaccard against the unlabeled truth, kept share, each maceral's share of the kept).

No validation split (8 labeled images are too few to pick a checkpoint by): every arm is scored at its
last step, on the test scenes, by the SS2 metric on the maceral classes (foreground micro Jaccard),
once with its raw weights and once with their EMA (``ema_decay``; the ``<arm> ema`` columns). The
table gives per-seed scores, each method's gain (raw, then EMA) over the best supervised budget and
weights, its mean, standard error and wins. Each arm's test IoU per class (raw weights), over all
test scenes and within each illumination (white light, fluorescence), is printed and kept in the results
JSON (``test_iou_per_class``): which class carries or sinks a score, and in which light. Finished arms
are kept: rerunning with the same ``--out`` resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ssl_seg import CLASS_NAMES
from ssl_seg.config import load_config
from ssl_seg.data.io import save_json
from ssl_seg.data.synthetic import LABELED_MODES, write_dataset
from ssl_seg.evaluate import evaluate_dirs
from ssl_seg.metrics import confusion_matrix, per_class_iou
from ssl_seg.predict import predict_folder
from ssl_seg.train.checkpoint import load_checkpoint, save_checkpoint
from ssl_seg.train.loop import train


def ema_checkpoint(latest: Path, out: Path) -> Path:
    """``latest.pth`` with the EMA of its weights (decay ``ema_decay``) as the model: what ``predict`` then uses."""
    state = load_checkpoint(latest)
    state["model"] = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    save_checkpoint(out, state)
    return out


def test_summary(checkpoint: Path, data: Path, pred: Path, tile_size: int) -> dict:
    """``evaluate_dirs``'s summary of ``checkpoint``'s predictions of the test scenes."""
    predict_folder(checkpoint, data / "test", pred, tile_size=tile_size, device="cpu", workers=0, progress=False)
    return evaluate_dirs(pred, data / "test_answers")


def class_iou(summary: dict) -> dict[str, float]:
    return {name: round(summary[f"iou/{name}"], 4) for name in CLASS_NAMES}


def iou_by_mode(pred: Path, answers: Path, scene_modes: dict[str, str]) -> dict[str, dict[str, float | None]]:
    """Test IoU per class within each illumination mode: a class can be learned in one light and not the other."""
    totals = {}
    for path in sorted(pred.glob("*_pred.npy")):
        scene_id = path.name.removesuffix("_pred.npy")
        cm = confusion_matrix(np.load(answers / f"{scene_id}_gt.npy"), np.load(path))
        mode = scene_modes[scene_id]
        totals[mode] = totals.get(mode, 0) + cm
    return {mode: {name: None if np.isnan(v) else round(float(v), 4)  # None: a class absent in that light
                   for name, v in zip(CLASS_NAMES, per_class_iou(cm))}
            for mode, cm in sorted(totals.items())}


def arm_score(data: Path, run: Path, cfg, mode: str, tile_size: int, scene_modes: dict[str, str]) -> dict:
    """Train one arm (unless done) and score its last step on the test scenes, the raw weights and their EMA.
    Arms scored before a field was kept get it from their stored predictions or checkpoint."""
    result = run / "score.json"
    out = json.loads(result.read_text()) if result.is_file() else {}
    if not out:
        tick = time.perf_counter()
        train(cfg, data, run, mode=mode, progress=False, resume=True)
        seconds = time.perf_counter() - tick
        summary = test_summary(run / "latest.pth", data, run / "pred", tile_size)
        out = {"micro_jaccard_macerals": summary["micro_jaccard_macerals"], "train_seconds": seconds,
               "iou": class_iou(summary)}
    if "iou" not in out:  # which class carries or sinks the score
        out["iou"] = class_iou(evaluate_dirs(run / "pred", data / "test_answers"))
    if "iou_by_mode" not in out:
        out["iou_by_mode"] = iou_by_mode(run / "pred", data / "test_answers", scene_modes)
    if "micro_jaccard_macerals_ema" not in out:
        out["micro_jaccard_macerals_ema"] = test_summary(ema_checkpoint(run / "latest.pth", run / "ema.pth"), data,
                                                         run / "pred_ema", tile_size)["micro_jaccard_macerals"]
    save_json(result, out)
    return out


def pseudo_label_curve(run: Path) -> dict:
    """The online pseudo-labels' health by quarter of the run, from TensorBoard: their maceral Jaccard
    against the unlabeled truth, the kept share of pixels and each maceral's share of the kept ones."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    tags = ["train/pseudo_jaccard", "train/mask_ratio"] + [f"train/mask_ratio_{c}" for c in CLASS_NAMES[1:]]
    curve = {}
    for tag in tags:
        if tag not in events.Tags()["scalars"]:
            continue
        values = [(e.step, e.value) for e in events.Scalars(tag)]
        last = max(step for step, _ in values)
        quarters = [[v for step, v in values if q * last / 4 < step <= (q + 1) * last / 4] for q in range(4)]
        curve[tag.removeprefix("train/")] = [round(statistics.mean(q), 3) if q else None for q in quarters]
    return curve


def arm_settings(args, seed: int, steps: int, method: str | None = None) -> dict:
    """The config of one arm: supervised (``method`` None), or ``method`` with as many unlabeled crops as labeled."""
    settings = {"model": args.model, "batch_size": args.batch_size, "tile_size": args.tile_size, "lr": args.lr,
                "val_fraction": 0.0, "seed": seed, "num_workers": args.num_workers, "device": "cpu",
                "warmup_steps": max(1, args.steps // 20), "log_every": 10, "val_every": 10**9, "steps": steps}
    if method is not None:
        settings.update({"batch_size": 2 * args.batch_size, "labeled_ratio": 0.5, "method": method,
                         "rampup_fraction": args.rampup, "consistency_threshold": args.threshold})
    return settings


def run_seed(seed: int, args) -> dict:
    root = Path(args.out) / f"seed{seed}"
    data = root / "data"
    height, width = args.size
    scene_modes = write_dataset(data, args.labeled, args.unlabeled, args.test, (height, width), seed, progress=False,
                                magnification=2.5, unlabeled_truth=True,
                                labeled_modes=args.labeled_modes)["scene_modes"]  # truth: for diagnostics
    rows = {}
    for budget in args.budgets:
        cfg = load_config(None, arm_settings(args, seed, args.steps * budget))
        rows[f"supervised@{budget}x"] = arm_score(data, root / f"supervised_{budget}x", cfg, "finetune", 256, scene_modes)
    for method in args.methods:
        cfg = load_config(None, args.set, base=load_config(None, arm_settings(args, seed, args.steps, method)))
        arm = method + args.tag
        rows[arm] = arm_score(data, root / arm, cfg, "pretrain", 256, scene_modes)
        print(f"seed {seed} {arm}: pseudo-labels by quarter of the run {pseudo_label_curve(root / arm)}")
    for arm, row in rows.items():
        print(f"seed {seed} {arm}: test IoU per class {row['iou']}; by illumination {row['iou_by_mode']}")
    scores = {**{arm: row["micro_jaccard_macerals"] for arm, row in rows.items()},
              **{f"{arm} ema": row["micro_jaccard_macerals_ema"] for arm, row in rows.items()}}
    return scores, {arm: {"all": row["iou"], **row["iou_by_mode"]} for arm, row in rows.items()}


def table(results: dict[int, dict], methods: list[str], tag: str = "") -> str:
    arms = list(next(iter(results.values())))
    lines = ["seed  " + "  ".join(f"{arm:>15}" for arm in arms)]
    lines += [f"{seed:>4}  " + "  ".join(f"{row[arm]:>15.4f}" for arm in arms) for seed, row in results.items()]
    for method in [m + tag + weights for m in methods for weights in ("", " ema")]:
        # against the best supervised budget, raw or EMA weights
        gains = [100 * (row[method] - max(v for k, v in row.items() if k.startswith("supervised")))
                 for row in results.values()]
        error = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else float("nan")
        lines.append(f"{method} vs best supervised: gains " + ", ".join(f"{g:+.1f}" for g in gains)
                     + f" points; mean {statistics.mean(gains):+.2f} ± {error:.2f} (s.e.); "
                     f"wins {sum(g > 0 for g in gains)}/{len(gains)}")
    return "\n".join(lines)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/online_ssl")
    parser.add_argument("--model", default="unet-small")
    parser.add_argument("--methods", nargs="+", default=["unimatch"])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 2], help="supervised steps as multiples of --steps")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=4, help="labeled crops per step (SSL arms add as many unlabeled)")
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rampup", type=float, default=0.2, help="rampup_fraction of the semi-supervised arms")
    parser.add_argument("--threshold", type=float, default=0.9, help="consistency_threshold of the SSL arms")
    parser.add_argument("--labeled", type=int, default=8)
    parser.add_argument("--unlabeled", type=int, default=100)
    parser.add_argument("--test", type=int, default=24)
    parser.add_argument("--labeled-modes", choices=LABELED_MODES, default="random",
                        help="light of the labeled scenes (write_dataset's labeled_modes); use a new --out for each")
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"))
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config keys of the SSL arms")
    parser.add_argument("--tag", default="", help="suffix of the SSL arms' folder and column names, for variants "
                        "(e.g. --tag=-own --set unimatch_teacher=own); the supervised arms are shared")
    parser.add_argument("--smoke", action="store_true", help="a tiny budget, to check the script runs")
    return parser


def main() -> None:
    args = argument_parser().parse_args()
    if args.smoke:
        args.seeds, args.steps, args.unlabeled, args.test, args.size, args.tile_size = [0], 3, 4, 2, [64, 80], 64
        args.budgets, args.labeled, args.batch_size = [1], 3, 2
    results, per_class = {}, {}
    for seed in args.seeds:
        results[seed], per_class[seed] = run_seed(seed, args)
    text = table(results, args.methods, args.tag)
    print(text)
    save_json(Path(args.out) / f"results{args.tag}.json", {"args": vars(args), "scores": results, "table": text,
                                                "test_iou_per_class": per_class,
                                                "command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
