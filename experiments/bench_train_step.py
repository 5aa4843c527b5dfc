"""Training step breakdown of the real ``ssl_seg.train.loop.train`` loop.

The GPU figures (one H100; targets: augmentation at most 5% of a step, data wait about zero):

    # the SS2 recipe (experiments/ss2_segformer.yaml): SegFormer-b5, batch 8 of 640x640, 8 workers, channels_last
    python experiments/bench_train_step.py --model segformer-b5 --tile-size 640 --workers 8 --channels-last --json bench_finetune_b5.json
    python experiments/bench_train_step.py --model segformer-b5 --tile-size 640 --workers 8 --channels-last --mode pretrain --json bench_pretrain_b5.json
    python experiments/bench_train_step.py --model segformer-b5 --tile-size 640 --workers 8 --channels-last --compile --json bench_finetune_b5_compiled.json

    python experiments/bench_train_step.py --smoke            # CPU, seconds: checks the script runs

It writes a procedural dataset (``--labeled`` images of ``--size``, plus ``--unlabeled`` for
``--mode pretrain``, pseudo-labelled by a random teacher with ``pseudo_label(refine="none")``),
runs ``train`` for ``--steps`` with random weights of the chosen size (``segformer-b5`` etc. are
saved with ``save_pretrained`` and loaded as ``--pretrained`` folders), then reads back the
TensorBoard scalars the trainer logs every ``--log-every`` steps: ``time/data_s_per_step``,
``time/augment_s_per_step``, ``time/teacher_s_per_step`` (the EMA teacher's forward pass, in
pretraining), ``time/compute_s_per_step``, ``train/images_per_s`` and, on CUDA,
``train/peak_memory_gib``. The first logging window (warm-up: worker start, kernel selection,
compilation) is left out. The trainer synchronises CUDA around its timers.

More than 512 unlabeled images turn the dataset's in-memory image cache off, as on SS2
(8,641 images): each crop then decodes its JPEG in a DataLoader worker.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

import bench_common as common

from ssl_seg.config import apply_overrides, load_config
from ssl_seg.data.io import save_json
from ssl_seg.data.pseudo_labels import manifest_image_path, merge_manifest
from ssl_seg.pseudo.run import pseudo_label
from ssl_seg.train.loop import train

AUGMENT_SHARE_TARGET = 0.05  # augmentation at most 5% of a step
STARVED_SHARE = 0.02  # data wait above 2% of a step: the device waits for data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10, help="steps per logging window (default 10)")
    parser.add_argument("--mode", default="finetune", choices=["finetune", "pretrain"])
    parser.add_argument("--model", default="segformer-tiny", choices=common.MODEL_CHOICES,
                        help="random weights of this size (default segformer-tiny)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (default: bf16 autocast)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (default 4)")
    parser.add_argument("--size", type=common.parse_size, default=(1024, 1360), help="image HxW (default 1024x1360)")
    parser.add_argument("--labeled", type=int, default=16, help="labeled images (default 16)")
    parser.add_argument("--unlabeled", type=int, default=600,
                        help="pseudo-labelled images for --mode pretrain "
                             "(default 600: above the 512-image cache limit)")
    parser.add_argument("--unique", type=int, default=8, help="distinct scenes rendered per split; the rest are copies")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="any other trainer config key")
    common.common_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.log_every, args.batch_size, args.tile_size = 4, 1, 2, 64
        args.workers, args.size, args.labeled, args.unlabeled, args.unique = 0, (96, 128), 3, 3, 2
        args.device = "cpu" if args.device == "auto" else args.device
    if args.steps < 2 * args.log_every:
        parser.error(f"--steps ({args.steps}) must cover at least two --log-every windows ({args.log_every}): "
                     "the first one is warm-up")
    return args


def pseudo_labelled(root: Path, count: int, work: Path, device: str) -> Path:
    """A pseudo-label folder for ``count`` unlabeled images of ``root``, made with ``pseudo_label``.

    Only the rendered scenes are labelled (a random teacher, no refinement, threshold 0 so every
    pixel has a label); their copies get entries pointing at the same mask, and the manifest is
    merged the way the command merges shards.
    """
    unlabeled = root / "train" / "unlabeled"
    originals = sorted(p for p in unlabeled.glob("*.JPG") if common.original_id(p.stem) == p.stem)
    scenes = work / "scenes"
    scenes.mkdir(parents=True, exist_ok=True)
    for path in originals:
        shutil.copyfile(path, scenes / path.name)
    teacher = common.write_teacher_checkpoint("segformer-tiny", work / "teacher" / "best.pth")
    out = work / "pseudo"
    pseudo_label(teacher, scenes, out, refine="none", threshold=0.0, tile_size=256, device=device, workers=0,
                 progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    settings = {k: v for k, v in manifest.items() if k not in ("summary", "images")}
    for path in sorted(unlabeled.glob("*.JPG")):
        source = json.loads((out / "entries" / f"{common.original_id(path.stem)}.json").read_text())
        entry = {**source, "image": manifest_image_path(path, out)}
        save_json(out / "entries" / f"{path.stem}.json", entry)
    merge_manifest(out, settings)
    return out


def read_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def breakdown(scalars: dict, batch_size: int) -> dict:
    """Mean seconds per step of each part and images/s over the logging windows after the first."""
    first = min(step for step, _ in scalars["time/compute_s_per_step"])

    def mean(tag: str) -> float | None:
        values = [v for step, v in scalars.get(tag, []) if step > first]
        return float(np.mean(values)) if values else None

    parts = {"data wait": mean("time/data_s_per_step"), "augmentation": mean("time/augment_s_per_step"),
             "EMA teacher forward": mean("time/teacher_s_per_step"),
             "forward + backward + optimizer": mean("time/compute_s_per_step")}
    parts = {name: value for name, value in parts.items() if value is not None}
    images_per_s = mean("train/images_per_s")
    step = batch_size / images_per_s  # wall time per step, logging included
    parts["other (logging, loop)"] = max(0.0, step - sum(parts.values()))
    peak = [v for _, v in scalars.get("train/peak_memory_gib", [])]
    return {"seconds_per_step": parts, "step_seconds": step, "images_per_s": images_per_s,
            "peak_memory_gib": max(peak) if peak else None,
            "windows": len([s for s, _ in scalars["time/compute_s_per_step"] if s > first])}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, info = common.start("training step breakdown (ssl_seg.train.loop.train)", args.device)
    print(f"{args.mode}: {args.model} (random), batch {args.batch_size} x {args.tile_size}x{args.tile_size}, "
          f"{args.steps} steps, channels_last {args.channels_last}, compile {args.compile}, "
          f"amp {not args.no_amp and device.type == 'cuda'}, {args.workers} workers", flush=True)

    with common.workdir(args.workdir) as work:
        unlabeled = args.unlabeled if args.mode == "pretrain" else 0
        root = common.synthetic_dataset(work / "data", args.size, labeled=args.labeled, unlabeled=unlabeled,
                                        unique=args.unique)
        overrides = {
            "steps": args.steps, "log_every": args.log_every, "batch_size": args.batch_size,
            "tile_size": args.tile_size, "channels_last": args.channels_last, "compile": args.compile,
            "amp": not args.no_amp, "num_workers": args.workers, "device": str(device),
            # one validation-free run: the only checkpoint is written after the last logging window
            "val_fraction": 0.0, "val_every": args.steps, "image_every": args.steps,
            "warmup_steps": min(5, args.steps), **common.trainer_model_args(args.model, work / "weights"),
        }
        if args.mode == "pretrain":
            overrides["pseudo_labels"] = str(pseudo_labelled(root, unlabeled, work, str(device)))
        cfg = apply_overrides(load_config(None, overrides), args.set)
        run_dir = work / "run"
        common.reset_peak_memory(device)
        start = time.perf_counter()
        train(cfg, root, run_dir, mode=args.mode, progress=False)
        wall = time.perf_counter() - start
        scalars = read_scalars(run_dir / "tb")

    figures = breakdown(scalars, args.batch_size)
    step = figures["step_seconds"]
    parts = figures["seconds_per_step"]
    shares = {name: seconds / step for name, seconds in parts.items()}
    print(f"\nmean over {figures['windows']} logging windows of {args.log_every} steps (the first window is warm-up):")
    common.print_table([[name, 1000 * seconds, 100 * shares[name]] for name, seconds in parts.items()]
                       + [["step", 1000 * step, 100.0]], ["part", "ms/step", "% of step"])
    augment_ok = shares["augmentation"] <= AUGMENT_SHARE_TARGET
    starved = shares["data wait"] > STARVED_SHARE
    peak = figures["peak_memory_gib"]
    print(f"\nthroughput: {figures['images_per_s']:.2f} images/s ({args.tile_size}x{args.tile_size} crops); "
          f"peak GPU memory: {f'{peak:.2f} GiB' if peak is not None else 'n/a (not logged: CPU run)'}")
    print(f"augmentation {100 * shares['augmentation']:.1f}% of the step: "
          f"{'within' if augment_ok else 'OVER'} the {100 * AUGMENT_SHARE_TARGET:.0f}% target")
    print(f"data wait {100 * shares['data wait']:.1f}% of the step: "
          + ("the device waits for data (starved)" if starved else "the device is not starved"))
    print(f"whole run {wall:.1f} s")

    result = {
        **info,
        "benchmark": "train_step",
        "settings": {"mode": args.mode, "model": args.model, "batch_size": args.batch_size,
                     "tile_size": args.tile_size, "steps": args.steps, "log_every": args.log_every,
                     "channels_last": args.channels_last, "compile": args.compile,
                     "amp": not args.no_amp, "workers": args.workers, "size": list(args.size),
                     "labeled": args.labeled, "unlabeled": unlabeled, "set": args.set},
        "ms_per_step": {name: 1000 * seconds for name, seconds in parts.items()},
        "share_of_step": shares,
        "step_ms": 1000 * step,
        "images_per_s": figures["images_per_s"],
        "peak_memory_gib": peak,
        "augmentation_within_5_percent": augment_ok,
        "data_starved": starved,
        "windows": figures["windows"],
        "wall_seconds": wall,
    }
    common.finish(result, args.json)
    return result


if __name__ == "__main__":
    main()
