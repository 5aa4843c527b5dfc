"""Ours versus the seed's way, side by side in one run: training augmentation and SAM prompting.

The GPU figures (one H100):

    # the SS2 recipe's student and loader (experiments/ss2_segformer.yaml): SegFormer-b5, batch 8 of 640x640, 8 workers
    python experiments/bench_seed_way.py --model segformer-b5 --tile-size 640 --workers 8 --json bench_seed_way_b5.json
    # a small student, where the device waits most visibly for CPU augmentation
    python experiments/bench_seed_way.py --model segformer-b0 --workers 8 --only training --json bench_seed_way_b0.json

    python experiments/bench_seed_way.py --smoke              # CPU, seconds: checks the script runs

(a) Training throughput. Same data (random crops of a procedural dataset), same random-weight
    model, loss (``SegmentationLoss``) and optimiser (AdamW, fused on CUDA), same bf16 autocast;
    the only difference is where augmentation runs:
      - ours: uint8 crops come from the DataLoader, ``TrainAugment`` (kornia) runs on the
        training device on the whole batch;
      - the seed's way: the same kornia pipelines run on the CPU, one sample at a time, inside
        the DataLoader workers (``__getitem__``), and float images travel to the device.
    Trials alternate (ours, seed's, ours, ...); each starts fresh workers and leaves its first
    ``--warmup`` steps out; the median images/s of each arm is reported.

(b) SAM refinement of teacher maps. ``SamRefiner.refine`` (the image embedded once, prompts
    decoded in batches, post-processing in torch on the device) versus
    ``SamRefiner.refine(..., one_at_a_time=True)`` (``SamProcessor`` + the full model, encoder included,
    once per prompt) on the same images and the same teacher maps (a random teacher, threshold 0
    so that every component is prompted), alternating image by image.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import bench_common as common

from ssl_seg.augment import TrainAugment
from ssl_seg.data.dataset import CropDataset, DrawSampler
from ssl_seg.data.io import read_image
from ssl_seg.data.layout import discover
from ssl_seg.inference import autocast_for, predict_proba, to_tensor
from ssl_seg.train.losses import SegmentationLoss


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training = parser.add_argument_group("(a) training")
    training.add_argument("--model", default="segformer-tiny", choices=common.MODEL_CHOICES)
    training.add_argument("--batch-size", type=int, default=8)
    training.add_argument("--tile-size", type=int, default=512)
    training.add_argument("--workers", type=int, default=4, help="DataLoader workers of both arms (default 4)")
    training.add_argument("--steps", type=int, default=20, help="timed steps per trial (default 20)")
    training.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each trial")
    training.add_argument("--trials", type=int, default=3, help="trials per arm, alternating (default 3)")
    training.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (default: bf16 autocast)")
    data = parser.add_argument_group("data")
    data.add_argument("--size", type=common.parse_size, default=(1024, 1360), help="image HxW (default 1024x1360)")
    data.add_argument("--labeled", type=int, default=16)
    data.add_argument("--unique", type=int, default=8)
    sam = parser.add_argument_group("(b) SAM refinement")
    sam.add_argument("--sam", default="vit-b", choices=["vit-b", "tiny"])
    sam.add_argument("--sam-images", type=int, default=2, help="images refined by each arm (default 2)")
    sam.add_argument("--teacher", default="segformer-tiny", choices=common.MODEL_CHOICES)
    sam.add_argument("--threshold", type=float, default=0.0)
    sam.add_argument("--max-prompts", type=int, default=256, help="the refiner's default: 256")
    sam.add_argument("--min-area", type=int, default=64, help="the refiner's default: 64")
    parser.add_argument("--only", choices=["training", "sam"], help="run one part only")
    common.common_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.tile_size, args.workers, args.steps, args.warmup, args.trials = 2, 64, 1, 3, 1, 1
        args.size, args.labeled, args.unique = (96, 128), 2, 2
        args.sam, args.sam_images, args.max_prompts, args.min_area = "tiny", 2, 3, 16
        args.device = "cpu" if args.device == "auto" else args.device
    return args


# ----------------------------------------------------------------------------- (a) training


class CpuAugmentedCrops(Dataset):
    """The seed's way: each crop augmented by the kornia pipelines on the CPU, in its worker."""

    def __init__(self, crops: CropDataset, augment: TrainAugment):
        self.crops = crops
        self.augment = augment

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        item = self.crops[k]
        image = item["image"][None].float().div_(255)
        image, mask = self.augment.geometric(image, item["mask"][None])
        return {"image": self.augment.weak(image).clamp_(0, 1)[0], "mask": mask[0]}


class Arms:
    """One model, loss and optimiser shared by both arms: only where augmentation runs differs."""

    def __init__(self, args, device: torch.device, samples):
        self.args, self.device = args, device
        torch.manual_seed(0)
        self.model = common.random_segmenter(args.model).to(device).train()
        self.criterion = SegmentationLoss().to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=device.type == "cuda")
        self.device_augment = TrainAugment().to(device)
        self.crops = CropDataset(samples, args.tile_size, seed=0, cache=True)
        # Decode every image once here: the forked workers of every trial inherit the filled cache,
        # so no trial pays for JPEG decoding (the labeled set stays in memory in the trainer too).
        for draw in range(len(self.crops)):  # draws 0..n-1 visit each image once
            self.crops[draw]
        self.cpu_crops = CpuAugmentedCrops(self.crops, TrainAugment())
        self.draws = 0

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        with autocast_for(self.device, not self.args.no_amp):
            logits = self.model(images)
        loss, _ = self.criterion(logits, masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def trial(self, arm: str) -> float:
        """Images/s of ``arm`` ("ours" or "seed") over ``steps`` steps after ``warmup``."""
        args, device = self.args, self.device
        per_trial = (args.warmup + args.steps) * args.batch_size
        dataset = self.crops if arm == "ours" else self.cpu_crops
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=DrawSampler(self.draws, per_trial),
                            num_workers=args.workers, pin_memory=device.type == "cuda", drop_last=True)
        self.draws += per_trial
        start = 0.0
        for index, batch in enumerate(loader):
            if index == args.warmup:
                common.sync(device)
                start = time.perf_counter()
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            if arm == "ours":
                images, masks = self.device_augment.geometric(images.float().div_(255), masks)
                images = self.device_augment.weak(images).clamp_(0, 1)
            self.step(images, masks)
        common.sync(device)
        return args.steps * args.batch_size / (time.perf_counter() - start)


def training_comparison(args, device: torch.device, samples) -> dict:
    arms = Arms(args, device, samples)
    rates: dict[str, list[float]] = {"ours": [], "seed": []}
    for trial in range(args.trials):
        for arm in ("ours", "seed") if trial % 2 == 0 else ("seed", "ours"):
            rates[arm].append(arms.trial(arm))
            print(f"  trial {trial + 1} {arm:>4}: {rates[arm][-1]:.2f} images/s", flush=True)
    ours, seed = common.median(rates["ours"]), common.median(rates["seed"])
    return {"ours_images_per_s": ours, "seed_images_per_s": seed, "ratio": ours / seed,
            "trials": rates, "model": args.model, "batch_size": args.batch_size, "tile_size": args.tile_size,
            "workers": args.workers, "steps_per_trial": args.steps}


# ----------------------------------------------------------------------------- (b) SAM


def sam_comparison(args, device: torch.device, samples) -> dict:
    from transformers import SamModel

    from ssl_seg.pseudo.sam import SamRefiner

    torch.manual_seed(0)
    teacher = common.random_segmenter(args.teacher).to(device).eval()
    refiner = SamRefiner(SamModel(common.sam_config(args.sam)), device=device)
    scenes = []
    for sample in samples[: args.sam_images]:
        image = read_image(sample.image)
        probs = predict_proba(teacher, to_tensor(image, device), tile_size=min(512, max(image.shape[:2])))[0]
        confidence, labels = (t.cpu().numpy() for t in probs.max(dim=0))
        scenes.append((image, labels.astype(np.uint8), confidence.astype(np.float32)))
    del teacher
    options = {"threshold": args.threshold, "max_prompts": args.max_prompts, "min_area": args.min_area}

    # warm-up: kernels, the processor, allocator pools
    image, labels, confidence = scenes[0]
    refiner.refine(image, labels, confidence, **options)
    refiner.refine(image, labels, confidence, **{**options, "max_prompts": 1}, one_at_a_time=True)

    seconds = {"ours": 0.0, "seed": 0.0}
    prompts, calls, agreement = [], {"ours": 0, "seed": 0}, []
    for index, (image, labels, confidence) in enumerate(scenes):
        refined = {}
        for arm in ("ours", "seed") if index % 2 == 0 else ("seed", "ours"):
            (refined[arm], stats), took = common.timed(device, refiner.refine, image, labels, confidence, **options,
                                                        one_at_a_time=arm != "ours")
            seconds[arm] += took
            calls[arm] += stats["decoder_calls"]
            print(f"  image {index + 1} {arm:>4}: {took:.3f} s, {stats['prompts']} prompts, "
                  f"{stats['decoder_calls']} model calls", flush=True)
        prompts.append(stats["prompts"])
        agreement.append(float((refined["ours"] == refined["seed"]).mean()))
    count = len(scenes)
    ours, seed = count / seconds["ours"], count / seconds["seed"]
    return {"ours_images_per_s": ours, "seed_images_per_s": seed, "ratio": ours / seed,
            "prompts_per_image": float(np.mean(prompts)),
            "model_calls_per_image": {arm: n / count for arm, n in calls.items()},
            "maps_agree_fraction": float(np.mean(agreement)), "images": count, "sam": args.sam,
            "size": list(args.size), "max_prompts": args.max_prompts}


# ----------------------------------------------------------------------------- main


def faster_or_slower(ratio: float) -> str:
    """``ratio`` = ours / seed's images/s, in words."""
    if ratio >= 1:
        return f"ours is {ratio:.1f}x faster than the seed's way"
    return f"ours is {1 / ratio:.1f}x SLOWER than the seed's way"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, info = common.start("ours versus the seed's way (same run, alternating trials)", args.device)
    result = {**info, "benchmark": "seed_way"}
    with common.workdir(args.workdir) as work:
        root = common.synthetic_dataset(work / "data", args.size, labeled=args.labeled, unique=args.unique)
        samples = discover(root).labeled
        if args.only in (None, "training"):
            print(f"(a) training: {args.model} (random), batch {args.batch_size} x {args.tile_size}x{args.tile_size}, "
                  f"{args.workers} workers, {args.trials} trials x {args.steps} steps per arm", flush=True)
            result["training"] = training_comparison(args, device, samples)
        if args.only in (None, "sam"):
            print(f"(b) SAM refinement: SAM {args.sam} (random), {args.sam_images} images "
                  f"{args.size[0]}x{args.size[1]}, teacher {args.teacher} (random)", flush=True)
            result["sam"] = sam_comparison(args, device, samples)

    rows = []
    if "training" in result:
        t = result["training"]
        rows += [["training: ours (augmentation on the device, whole batch)", t["ours_images_per_s"], 1.0],
                 [f"training: seed's way (augmentation on the CPU, per sample, {args.workers} workers)",
                  t["seed_images_per_s"], 1 / t["ratio"]]]
    if "sam" in result:
        s = result["sam"]
        rows += [["SAM: ours (one embedding, batched prompts)", s["ours_images_per_s"], 1.0],
                 ["SAM: seed's way (processor + full model per prompt)", s["seed_images_per_s"], 1 / s["ratio"]]]
    print()
    common.print_table(rows, ["arm", "images/s", "relative to ours"])
    if "training" in result:
        print(f"training: {faster_or_slower(result['training']['ratio'])}")
    if "sam" in result:
        s = result["sam"]
        print(f"SAM refinement: {faster_or_slower(s['ratio'])} "
              f"({s['prompts_per_image']:.1f} prompts per image; refined maps agree on "
              f"{100 * s['maps_agree_fraction']:.2f}% of pixels)")
    common.finish(result, args.json)
    return result


if __name__ == "__main__":
    main()
