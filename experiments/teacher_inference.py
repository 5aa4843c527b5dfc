"""Would other teacher inference make better pseudo-labels? Scores a checkpoint on the test images
with its trained weights and its EMA weights, at several input scales (flip/rot90 TTA at each).

    python experiments/teacher_inference.py --checkpoint runs/ssl_benchmark/seed0/runs/teacher/best.pth \\
        --data runs/ssl_benchmark/seed0/data

A scale set such as ``1+1.5`` averages the probabilities of the image at 1x and 1.5x (bilinear,
mapped back to full size). Printed: the foreground micro Jaccard (labels 1..3, as SS2 scores it) of
``DATA/test`` against ``DATA/test_answers`` for each weights x scale set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssl_seg.data.io import read_image, read_mask, save_json
from ssl_seg.data.layout import list_images
from ssl_seg.inference import predict_proba, to_tensor
from ssl_seg.metrics import MACERAL_LABELS, confusion_matrix, micro_jaccard
from ssl_seg.train.checkpoint import load_model


def ema_model(checkpoint: Path) -> torch.nn.Module:
    """The checkpoint's model with its EMA weights (``AveragedModel`` keys: ``module.<name>``)."""
    model, state = load_model(checkpoint)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"})
    return model.eval()


def scaled_proba(model: torch.nn.Module, image: torch.Tensor, scale: float, tta: int, tile_size: int) -> torch.Tensor:
    if scale == 1:
        return predict_proba(model, image, tile_size=tile_size, tta=tta)
    # recompute_scale_factor: both ways map pixel centres alike when height x scale is not whole
    resized = F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=False, antialias=scale < 1,
                            recompute_scale_factor=True)
    probs = predict_proba(model, resized, tile_size=tile_size, tta=tta)
    return F.interpolate(probs, size=image.shape[-2:], mode="bilinear", align_corners=False, antialias=scale > 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a teacher checkpoint (.pth)")
    parser.add_argument("--data", required=True, help="a procedural dataset: DATA/test and DATA/test_answers")
    parser.add_argument("--scales", nargs="+", default=["1", "1.5", "2", "1+1.5", "1+1.5+2", "0.75+1+1.5"],
                        help="scale sets, each scales joined by +")
    parser.add_argument("--tta", type=int, default=8, choices=[1, 2, 8])
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()

    data = Path(args.data)
    try:
        sets = {name: [float(s) for s in name.split("+")] for name in args.scales}
    except ValueError:
        parser.error(f"--scales takes sets of numbers joined by +, such as 1 1+1.5, not {' '.join(args.scales)}")
    if any(s <= 0 for chosen in sets.values() for s in chosen):
        parser.error("--scales must be positive")
    scales = sorted({s for chosen in sets.values() for s in chosen})
    models = {"trained": load_model(args.checkpoint)[0], "ema": ema_model(Path(args.checkpoint))}
    confusion = {(weights, name): np.zeros((4, 4), np.int64) for weights in models for name in sets}
    for path in list_images(data / "test"):
        image = to_tensor(read_image(path), torch.device("cpu"))
        truth = read_mask(data / "test_answers" / f"{path.stem}_gt.npy")
        for weights, model in models.items():
            probs = {scale: scaled_proba(model, image, scale, args.tta, args.tile_size) for scale in scales}
            for name, chosen in sets.items():
                pred = sum(probs[s] for s in chosen).argmax(1)[0].numpy()
                confusion[weights, name] += confusion_matrix(truth, pred)

    rows = {f"{weights} {name}": micro_jaccard(cm, MACERAL_LABELS) for (weights, name), cm in confusion.items()}
    print(f"{args.checkpoint}, TTA {args.tta}: foreground micro Jaccard on {data / 'test'}")
    for row, score in rows.items():
        print(f"  {row:<20} {score:.4f}")
    if args.json:
        save_json(args.json, {"checkpoint": str(args.checkpoint), "tta": args.tta, "micro_jaccard_macerals": rows})


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
