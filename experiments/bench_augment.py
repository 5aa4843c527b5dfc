"""Cost of each part of the training augmentation (``ssl_seg.augment``) on one batch, by op.

The GPU figures (one H100; the SS2 recipe's batch, 8 crops of 640x640):

    python experiments/bench_augment.py --json bench_augment.json

    python experiments/bench_augment.py --smoke            # CPU, seconds: checks the script runs

Each row is the median of ``--repeats`` calls after ``--warmup`` untimed ones, CUDA
synchronised. The pipelines run as the trainer runs them (each op with its own probability);
the single-op rows apply the op to every sample (p=1), i.e. its cost when drawn.
"""

from __future__ import annotations

import argparse
import time

import kornia.augmentation as K
import torch

import bench_common as common

from ssl_seg.augment import GeometricAugment, cutmix, photometric


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tile-size", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    common.common_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.tile_size, args.repeats, args.warmup = 2, 64, 3, 1
        args.device = "cpu" if args.device == "auto" else args.device
    return args


def median_ms(device: torch.device, function, repeats: int, warmup: int) -> float:
    times = []
    for index in range(warmup + repeats):
        common.sync(device)
        start = time.perf_counter()
        function()
        common.sync(device)
        if index >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return common.median(times)


def single_ops(pipeline: K.AugmentationSequential) -> dict[str, torch.nn.Module]:
    """Each op of a photometric pipeline alone, applied to every sample."""
    ops = {}
    for op in pipeline.children():
        op.p = 1.0
        ops[type(op).__name__] = op
    return ops


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, info = common.start("training augmentation cost (ssl_seg.augment)", args.device)
    size, batch = args.tile_size, args.batch_size
    print(f"batch {batch} x 3 x {size}x{size} float32, median of {args.repeats} calls", flush=True)

    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size, device=device)
    masks = torch.randint(0, 4, (batch, size, size), device=device)
    valid = torch.ones(batch, size, size, device=device)
    geometric = GeometricAugment().to(device)
    weak, strong = photometric("weak").to(device), photometric("strong").to(device)

    rows = {
        "geometric (image + mask)": lambda: geometric(images, masks),
        "geometric (image + mask + valid), pretraining": lambda: geometric(images, masks, valid),
        "photometric weak (pipeline)": lambda: weak(images),
        "photometric strong (pipeline)": lambda: strong(images),
        "cutmix (image + 4 maps)": lambda: cutmix(images, masks, masks, valid, valid),
    }
    for name, op in single_ops(photometric("strong").to(device)).items():
        rows[f"  strong {name} alone, p=1"] = lambda op=op: op(images)
    figures = {name: median_ms(device, function, args.repeats, args.warmup) for name, function in rows.items()}
    finetune = figures["geometric (image + mask)"] + figures["photometric weak (pipeline)"]
    figures["finetune step total (geometric + weak)"] = finetune
    common.print_table([[name, ms] for name, ms in figures.items()], ["part", "ms per batch"])

    result = {**info, "benchmark": "augment",
              "settings": {"batch_size": batch, "tile_size": size, "repeats": args.repeats, "warmup": args.warmup},
              "ms_per_batch": figures}
    common.finish(result, args.json)
    return result


if __name__ == "__main__":
    main()
