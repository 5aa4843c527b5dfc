"""Pseudo-labelling throughput of the real ``ssl-seg pseudo-label`` path, end to end.

The GPU figures (one H100; target: at least 75 images/s, i.e. 8,641 SS2 images in under 2 minutes):

    python experiments/bench_pseudo_label.py --json bench_pseudo_label.json

    # the SS2 recipe's teacher as well (experiments/ss2_segformer.yaml: SegFormer-b5, 8-view TTA, 1024 tiles)
    python experiments/bench_pseudo_label.py --teacher segformer-b5 --tta 8 --tile-size 1024 --json bench_pseudo_label_b5.json

    python experiments/bench_pseudo_label.py --smoke          # CPU, seconds: checks the script runs

The target is stated for the SAM ViT-B refiner; the default teacher is the small
``segformer-tiny`` so that the refiner and the pipeline around it are what is measured.

What it does: writes ``--images`` synthetic JPEGs of ``--size`` (default 64 at 1024x1360, the SS2
size), a random-weight teacher checkpoint (``--teacher``) and a random-weight SAM of ViT-B size
saved with ``save_pretrained``, then runs ``ssl_seg.pseudo.run.pseudo_label(..., refine="sam")``
on them twice:

1. clean: images/s from the moments each image is marked done, the first ``--warmup`` images
   (CUDA start-up, kernel selection) left out; model loading is not in the rate;
2. instrumented: the same run, one image at a time, with CUDA-synchronised timers around its
   steps (JPEG decode wait, teacher, SAM prompt extraction, SAM encoder, SAM decoder, the rest
   of SAM, writing), giving where an image's time goes.

``--batch-images N`` sets how many images go through the teacher in one call and ``--images-at-once N``
how many the clean run labels concurrently (the command's defaults: 8 and 16 on CUDA, 1 and 1
elsewhere). A third run, the per-image reference (one image a call, one at a time: the path before
batching), is timed the same way beside them, and ``batched_over_per_image`` is the clean run's rate
over it: on CPU with tiny models, ``--device cpu --batch-images 4``.

FLOPs per image (teacher + SAM encoder + SAM decoder) are counted on the first image with
``torch.utils.flop_counter.FlopCounterMode``; achieved TFLOP/s = FLOPs/image x images/s, set
against the device's datasheet bf16 dense peak. Random weights do the same FLOPs as trained ones.

The random teacher is unconfident everywhere (softmax ~0.25), so ``--threshold`` defaults to 0:
every pixel counts as confident and each connected component of a maceral class becomes a SAM
prompt (12 per 1024x1360 image with the default teacher on an H100; the count is reported). Random SAM masks are
rarely accepted; that does not change the work done.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import bench_common as common  # also puts the checkout on sys.path
from bench_common import StageTimer

from ssl_seg.data.io import read_image
from ssl_seg.inference import predict_proba, to_tensor
from ssl_seg.data import pseudo_labels as pseudo_folder
from ssl_seg.pseudo import run as pseudo_run
from ssl_seg.train.checkpoint import load_model

SS2_UNLABELED = 8641
TARGET_IMAGES_PER_S = 75.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images to pseudo-label (default 64)")
    parser.add_argument("--size", type=common.parse_size, default=(1024, 1360), help="HxW (default 1024x1360)")
    parser.add_argument("--unique", type=int, default=8, help="distinct scenes rendered; the rest are copies")
    parser.add_argument("--teacher", default="segformer-tiny", choices=common.MODEL_CHOICES,
                        help="random-weight teacher of this size (default segformer-tiny)")
    parser.add_argument("--sam", default="vit-b", choices=["vit-b", "tiny"], help="random SAM size (default vit-b)")
    parser.add_argument("--refine", default="sam", choices=["sam", "superpixel", "none"])
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="teacher confidence threshold (default 0: random teachers are never confident)")
    parser.add_argument("--tta", type=int, default=1, choices=[1, 2, 8])
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2, help="JPEG decoding workers (the command's default: 2)")
    parser.add_argument("--images-at-once", type=int, default=None,
                        help="images labelled concurrently (default: the command's, two batches on CUDA, one elsewhere)")
    parser.add_argument("--batch-images", type=int, default=None,
                        help="images per teacher call (default: the command's, 8 on CUDA and 1 elsewhere)")
    parser.add_argument("--warmup", type=int, default=4, help="first images left out of the rate")
    common.common_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.size, args.unique, args.warmup = 4, (128, 160), 2, 1
        args.teacher, args.sam, args.tile_size, args.workers = "segformer-tiny", "tiny", 128, 0
        args.device = "cpu" if args.device == "auto" else args.device
    if args.images < args.warmup + 2:
        parser.error(f"--images must be at least --warmup + 2 = {args.warmup + 2}")
    return args


class DoneClock:
    """Wraps the command's ``save_json``: notes when each ``entries/<id>.json`` (an image done) is written."""

    def __init__(self, on_done=None):
        self.stamps: list[float] = []
        self.on_done = on_done

    def __call__(self, path, obj):
        pseudo_run_save_json(path, obj)
        if Path(path).parent.name == "entries":
            self.stamps.append(time.perf_counter())
            if self.on_done is not None:
                self.on_done(len(self.stamps))

    def rate(self, warmup: int, batch: int = 1) -> tuple[float, float]:
        """(images/s, seconds) from image ``warmup`` done to the last one done. Images of a ``batch`` finish
        together, so the window opens at the end of a batch (``warmup`` rounded up), never inside one."""
        warmup = -(-(warmup + 1) // batch) * batch - 1
        if warmup >= len(self.stamps) - 1:
            raise SystemExit(f"--images {len(self.stamps)} leaves no batch after the warm-up; raise --images")
        seconds = self.stamps[-1] - self.stamps[warmup]
        return (len(self.stamps) - 1 - warmup) / max(seconds, 1e-9), seconds


pseudo_run_save_json = pseudo_folder.save_json


class PromptCounter:
    """Wraps ``SamRefiner.refine`` to collect each image's prompt and accepted-mask counts."""

    def __init__(self, refine):
        self.refine = refine
        self.prompts: list[int] = []
        self.accepted: list[int] = []

    def method(self):
        """A plain function to put in the class's place (a bound method would lose the refiner)."""

        def refine(refiner, *args, **kwargs):
            refined, stats = self.refine(refiner, *args, **kwargs)
            self.prompts.append(int(stats["prompts"]))
            self.accepted.append(int(stats["accepted"]))
            return refined, stats

        return refine


def run_pseudo_label(args, checkpoint: Path, images: Path, out: Path, sam_dir: Path | None, patches: list,
                     images_at_once: int | None = None, batch_images: int | None = None) -> None:
    from contextlib import ExitStack

    with ExitStack() as stack:
        for target, name, value in patches:
            stack.enter_context(mock.patch.object(target, name, value))
        pseudo_run.pseudo_label(checkpoint, images, out, refine=args.refine, sam=str(sam_dir) if sam_dir else None,
                                local_files_only=True, threshold=args.threshold, tta=args.tta,
                                tile_size=args.tile_size, device=str(args.device_), workers=args.workers,
                                progress=False, images_at_once=images_at_once, batch_images=batch_images)


def measure_flops(args, checkpoint: Path, image_path: Path, sam_dir: Path | None) -> dict:
    """FLOPs of one image: teacher (tiled, TTA), SAM encoder, SAM prompts through the decoder."""
    device = args.device_
    model, _ = load_model(checkpoint, device)
    image = read_image(image_path)
    probs, teacher = common.count_flops(predict_proba, model, to_tensor(image, device), tile_size=args.tile_size,
                                        tta=args.tta)
    flops = {"teacher": teacher, "sam_encoder": 0, "sam_decoder": 0, "prompts": 0}
    if args.refine == "sam" and sam_dir is not None:
        from ssl_seg.pseudo.sam import SamRefiner

        confidence, labels = (t.cpu().numpy() for t in probs[0].max(dim=0))
        refiner = SamRefiner.from_pretrained(str(sam_dir), local_files_only=True, device=device)
        (_, stats), sam_total = common.count_flops(refiner.refine, image, labels.astype(np.uint8),
                                                   confidence.astype(np.float32), threshold=args.threshold)
        flops["prompts"] = int(stats["prompts"])
        with torch.inference_mode():
            pixels, _ = refiner.preprocess(image)
            _, encoder = common.count_flops(refiner.model.get_image_embeddings, pixels)
        flops["sam_encoder"] = encoder
        flops["sam_decoder"] = sam_total - encoder  # prompt encoder + mask decoder + vote counting
        del refiner
    del model
    flops["total"] = flops["teacher"] + flops["sam_encoder"] + flops["sam_decoder"]
    return flops


def decode_ms(paths: list[Path]) -> float:
    """Milliseconds to decode one JPEG on one core (the work the decoding workers share)."""
    start = time.perf_counter()
    for path in paths:
        read_image(path)
    return 1000 * (time.perf_counter() - start) / len(paths)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, info = common.start("pseudo-labelling throughput (ssl_seg.pseudo.run.pseudo_label)", args.device)
    args.device_ = device
    height, width = args.size
    print(f"{args.images} JPEGs {height}x{width}, teacher {args.teacher} (random), refine {args.refine}"
          + (f" with SAM {args.sam} (random)" if args.refine == "sam" else "")
          + f", tiles {args.tile_size}, tta {args.tta}, threshold {args.threshold}, {args.workers} decode workers",
          flush=True)

    from ssl_seg.pseudo.sam import SamRefiner
    from transformers import SamModel
    import ssl_seg.pseudo.sam as sam_module

    with common.workdir(args.workdir) as work:
        root = common.synthetic_dataset(work / "data", args.size, unlabeled=args.images, unique=args.unique)
        images = root / "train" / "unlabeled"
        paths = sorted(images.glob("*.JPG"))
        checkpoint = common.write_teacher_checkpoint(args.teacher, work / "teacher" / "best.pth")
        sam_dir = common.write_random_sam(args.sam, work / f"sam-{args.sam}") if args.refine == "sam" else None

        # 1. clean run: only the done-clock and a prompt counter (no synchronisation added)
        clock = DoneClock()
        prompts = PromptCounter(SamRefiner.refine)
        common.reset_peak_memory(device)
        start = time.perf_counter()
        run_pseudo_label(args, checkpoint, images, work / "pseudo_clean", sam_dir,
                         [(pseudo_folder, "save_json", clock), (SamRefiner, "refine", prompts.method())],
                         images_at_once=args.images_at_once, batch_images=args.batch_images)
        wall = time.perf_counter() - start
        per_call, _ = pseudo_run.batching(device, args.images_at_once, args.batch_images)
        images_per_s, timed_seconds = clock.rate(args.warmup, per_call)
        peak_memory = common.peak_memory_gib(device)

        # 1b. the per-image reference, timed the same way: one image a teacher call, one at a time
        reference_clock = DoneClock()
        run_pseudo_label(args, checkpoint, images, work / "pseudo_reference", sam_dir,
                         [(pseudo_folder, "save_json", reference_clock)], images_at_once=1, batch_images=1)
        reference_per_s, _ = reference_clock.rate(args.warmup)

        # 2. instrumented run: synchronised timers around each step. The stages' window opens when the
        # command's loop asks for the first timed image; not when a warm-up image's files are written,
        # since writes run on a thread and may finish after the loop has labelled every image.
        timer = StageTimer(device)
        decoded_images = pseudo_run.decoded_images
        stage_seconds: dict[str, float] = {}

        def on_done(done: int) -> None:
            if done == args.images:  # the window ends with the last image (the manifest merge is not per image)
                stage_seconds.update(timer.seconds)

        instrumented_clock = DoneClock(on_done=on_done)
        patches = [
            (pseudo_folder, "save_json", timer.wrap("write (PNG + JSON)", instrumented_clock)),
            (pseudo_folder, "save_png", timer.wrap("write (PNG + JSON)", pseudo_folder.save_png)),
            (pseudo_run, "decoded_images",
             lambda todo, workers: timer.wrap_iterator("decode wait", decoded_images(todo, workers),
                                                       reset_at=args.warmup + 1)),
            (pseudo_run, "predict_proba", timer.wrap("teacher", predict_proba)),
            (pseudo_run, "superpixel_refine", timer.wrap("refine", pseudo_run.superpixel_refine)),
            (SamRefiner, "refine", timer.wrap("refine", SamRefiner.refine)),
            (sam_module, "prompts_from_labels", timer.wrap("SAM prompts (CPU)", sam_module.prompts_from_labels)),
            (SamModel, "get_image_embeddings", timer.wrap("SAM encoder", SamModel.get_image_embeddings)),
            (SamModel, "forward", timer.wrap("SAM decoder", SamModel.forward)),
        ]
        # one image at a time: with several at once the stages of different images would overlap
        run_pseudo_label(args, checkpoint, images, work / "pseudo_timed", sam_dir, patches, images_at_once=1,
                         batch_images=1)
        _, instrumented_seconds = instrumented_clock.rate(args.warmup)

        flops = measure_flops(args, checkpoint, paths[0], sam_dir)
        decode_one = decode_ms(paths[: min(len(paths), 8)])

    counted = len(instrumented_clock.stamps) - 1 - args.warmup  # images inside the timed window
    per_image = {name: 1000 * seconds / counted for name, seconds in stage_seconds.items()}
    sam_parts = ["SAM prompts (CPU)", "SAM encoder", "SAM decoder"]
    stages: dict[str, float] = {"decode wait": per_image.get("decode wait", 0.0),
                                "teacher": per_image.get("teacher", 0.0)}
    if args.refine == "sam":
        for name in sam_parts:
            stages[name] = per_image.get(name, 0.0)
        sam_rest = per_image.get("refine", 0.0) - sum(stages[n] for n in sam_parts)
        stages["SAM other (preprocess, upsample, paint)"] = sam_rest
    else:
        stages[f"refine ({args.refine})"] = per_image.get("refine", 0.0)
    stages["write (PNG + JSON)"] = per_image.get("write (PNG + JSON)", 0.0)
    total_ms = 1000 * instrumented_seconds / counted
    stages["other (TensorBoard, copies, stats)"] = total_ms - sum(stages.values())

    print("\nwhere an image's time goes (instrumented run, one image at a time, CUDA-synchronised timers):")
    common.print_table([[name, ms, 100 * ms / total_ms] for name, ms in stages.items()]
                       + [["total", total_ms, 100.0]], ["stage", "ms/image", "% of image"])

    peak = common.peak_tflops(device, "bf16" if device.type == "cuda" else "fp32")
    achieved = flops["total"] * images_per_s / 1e12
    mean_prompts = float(np.mean(prompts.prompts)) if prompts.prompts else 0.0
    print(f"\nprompts per image: {mean_prompts:.1f} (accepted masks: "
          f"{float(np.mean(prompts.accepted)) if prompts.accepted else 0.0:.1f})")
    decoders = f"{args.workers} workers" if args.workers else "the main thread"
    print(f"JPEG decode: {decode_one:.1f} ms/image on one core -> at most "
          f"{max(args.workers, 1) * 1000 / decode_one:.0f} images/s decoded by {decoders}")
    print(f"FLOPs per image: teacher {flops['teacher'] / 1e9:.4g} G + SAM encoder {flops['sam_encoder'] / 1e9:.4g} G"
          f" + SAM decoder {flops['sam_decoder'] / 1e9:.4g} G = {flops['total'] / 1e9:.4g} GFLOP"
          + (f" (counted on the first image, {flops['prompts']} prompts)" if args.refine == "sam" else ""))
    print(f"throughput: {images_per_s:.2f} images/s end to end (JPEG decode and writing included; "
          f"{round(images_per_s * timed_seconds)} images in {timed_seconds:.2f} s after the warm-up; "
          f"whole call with model loading {wall:.1f} s)")
    print(f"per-image reference (one image a call, one at a time): {reference_per_s:.2f} images/s; "
          f"this run's settings over it: {images_per_s / reference_per_s:.2f}x (side by side, one process)")
    if peak_memory is not None:
        print(f"peak GPU memory: {peak_memory:.2f} GiB")
    print(f"8,641 SS2 images would take {SS2_UNLABELED / images_per_s / 60:.1f} min")
    print(f"achieved {achieved:.2f} TFLOP/s" + (f" = {100 * achieved / peak:.1f}% of the {peak:.0f} TFLOP/s "
                                                  f"bf16 dense peak" if peak else " (no peak known for this device)"))
    on_h100 = "H100" in info["device"] and args.sam == "vit-b" and args.refine == "sam" and args.size == (1024, 1360)
    if on_h100:
        verdict = "met" if images_per_s >= TARGET_IMAGES_PER_S else "NOT met"
        print(f"target >= {TARGET_IMAGES_PER_S:.0f} images/s on one H100 with the SAM ViT-B refiner: {verdict}")

    result = {
        **info,
        "benchmark": "pseudo_label",
        "settings": {"images": args.images, "size": list(args.size), "teacher": args.teacher, "sam": args.sam,
                     "refine": args.refine, "threshold": args.threshold, "tta": args.tta,
                     "tile_size": args.tile_size, "workers": args.workers, "warmup": args.warmup,
                     "images_at_once": args.images_at_once, "batch_images": args.batch_images},
        "images_per_s": images_per_s,
        "per_image_reference_images_per_s": reference_per_s,
        "batched_over_per_image": images_per_s / reference_per_s,
        "seconds_timed": timed_seconds,
        "wall_seconds_with_loading": wall,
        "peak_memory_gib": peak_memory,
        "minutes_for_8641_images": SS2_UNLABELED / images_per_s / 60,
        "stage_ms_per_image": stages,
        "instrumented_ms_per_image": total_ms,
        "prompts_per_image": mean_prompts,
        "accepted_per_image": float(np.mean(prompts.accepted)) if prompts.accepted else 0.0,
        "decode_ms_per_image_one_core": decode_one,
        "gflops_per_image": {k: v / 1e9 for k, v in flops.items() if k != "prompts"},
        "flops_counted_with_prompts": flops["prompts"],
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "fraction_of_peak": achieved / peak if peak else None,
        "target_images_per_s": TARGET_IMAGES_PER_S,
        "target_met": (images_per_s >= TARGET_IMAGES_PER_S) if on_h100 else None,
    }
    common.finish(result, args.json)
    return result


if __name__ == "__main__":
    main()
