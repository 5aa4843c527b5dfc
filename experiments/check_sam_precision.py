"""Do the batched SAM path and the one-at-a-time reference agree, under bf16 autocast and in fp32?

    python experiments/check_sam_precision.py            # on a GPU: SAM ViT-B (random), 1024x1360 images
    python experiments/check_sam_precision.py --smoke    # CPU, seconds: checks the script runs

``bench_seed_way.py`` found the two refined maps agreeing on only 58% of pixels on an H100,
against over 99.5% in the CPU tests. This refines the same teacher maps four ways (batched or
one prompt at a time, under the CUDA bf16 autocast or with it switched off) and prints the
pixel agreement of each pair. The batched path keeps SAM's prompt encoder out of autocast; the
reference runs the whole model under it.
"""

from __future__ import annotations

import argparse
import contextlib

import bench_common as common

from ssl_seg.data.io import read_image
from ssl_seg.inference import predict_image
from ssl_seg.pseudo.sam import SamRefiner
from ssl_seg.train.checkpoint import load_model

PAIRS = [("batched", "one at a time", "bf16"), ("batched", "one at a time", "fp32"),
         ("batched", "batched", "bf16 vs fp32"), ("one at a time", "one at a time", "bf16 vs fp32")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=common.parse_size, default=(1024, 1360), help="HxW (default 1024x1360)")
    parser.add_argument("--sam", default="vit-b", choices=["vit-b", "tiny"])
    common.common_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.size, args.sam = 1, (128, 160), "tiny"
        args.device = "cpu" if args.device == "auto" else args.device
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, info = common.start("SAM batched path against the one-at-a-time reference, bf16 and fp32", args.device)
    with common.workdir(args.workdir) as work:
        root = common.synthetic_dataset(work / "data", args.size, unlabeled=args.images, unique=args.images)
        paths = sorted((root / "train" / "unlabeled").glob("*.JPG"))
        model, _ = load_model(common.write_teacher_checkpoint("segformer-tiny", work / "t" / "best.pth"), device)
        refiner = SamRefiner.from_pretrained(str(common.write_random_sam(args.sam, work / "sam")),
                                             local_files_only=True, device=device)
        rows = []
        for path in paths:
            image = read_image(path)
            labels, confidence = predict_image(model, image, device, tile_size=512)
            maps = {}
            for precision in ("bf16", "fp32"):
                if precision == "fp32":  # bf16 autocast is only used on CUDA; this switches it off there
                    refiner._autocast = contextlib.nullcontext
                for way, one_at_a_time in (("batched", False), ("one at a time", True)):
                    maps[way, precision], stats = refiner.refine(image, labels, confidence, threshold=0.0,
                                                                 one_at_a_time=one_at_a_time)
            del refiner._autocast
            row = {"image": path.name, "prompts": stats["prompts"]}
            for first, second, precision in PAIRS:
                a, b = (((first, "bf16"), (second, "fp32")) if " vs " in precision
                        else ((first, precision), (second, precision)))
                row[f"{first} vs {second}, {precision}"] = float((maps[a] == maps[b]).mean())
            rows.append(row)
    headers = list(rows[0])
    common.print_table([[row[h] for h in headers] for row in rows], headers)
    result = {**info, "benchmark": "sam_precision", "settings": {"images": args.images, "size": list(args.size),
                                                                 "sam": args.sam}, "agreement": rows}
    common.finish(result, args.json)
    return result


if __name__ == "__main__":
    main()
