"""``ssl-seg <command>``: synth, finetune, pseudo-label, pretrain, predict, evaluate, report, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ssl_seg.config import TrainConfig

TRAIN_FLAGS = {  # flag -> config key; flags left out keep the YAML / default value
    "model": str, "pretrained": str, "steps": int, "batch_size": int, "tile_size": int, "lr": float,
    "seed": int, "device": str, "init": str, "val_dir": str, "binary_class": str, "num_workers": int,
}


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x1360"`` -> (1024, 1360): height x width, for ``--size`` flags."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1024x1360 (height x width), not {text!r}") from None
    return height, width


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to the help of options whose default says something (not None or off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)
        if action.option_strings and shown and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    default = TrainConfig  # a flag left out keeps the --config value, else this default
    parser.add_argument("--data", required=True, help="dataset folder (SS2 layout or images/ + masks/)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints and TensorBoard logs (tb/)")
    parser.add_argument("--config", help="YAML training config, e.g. experiments/ss2_segformer.yaml")
    parser.add_argument("--model", help="a registered model, e.g. segformer-tiny or unet-small (an unknown name lists "
                        f"them all; README, Models) (default: {default.model})")
    parser.add_argument("--pretrained", help="hub id or local folder of backbone weights")
    parser.add_argument("--local-files-only", action="store_true", default=None,
                        help="never reach the hub; load --pretrained from the local cache or folder")
    parser.add_argument("--steps", type=int, help=f"optimizer steps (default: {default.steps})")
    parser.add_argument("--batch-size", type=int, help=f"crops per step (default: {default.batch_size})")
    parser.add_argument("--tile-size", type=int, help=f"training crop size in pixels (default: {default.tile_size})")
    parser.add_argument("--lr", type=float, help=f"peak learning rate, cosine schedule (default: {default.lr})")
    parser.add_argument("--seed", type=int, help=f"seed of the split, crops and augmentation (default: {default.seed})")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--init", help="checkpoint whose model weights start this run")
    parser.add_argument("--val-dir", help="a separate validation dataset (default: a seeded split of --data)")
    parser.add_argument("--binary-class", help="class of 0/255 binary masks in the labels folder, e.g. liptinite")
    parser.add_argument("--num-workers", type=int,
                        help=f"DataLoader workers reading and cropping images (default: {default.num_workers})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from latest.pth, with the settings it started with")
    parser.add_argument("--stop-after", type=int, metavar="STEPS",
                        help="stop after this many steps of this invocation (latest.pth saved; --resume continues)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any config key")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-seg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a procedural kerogen dataset in the SS2 layout",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("out", help="dataset folder to write (train/labeled, train/labels, train/unlabeled, test, ...)")
    p.add_argument("--labeled", type=int, default=8, help="scenes with masks")
    p.add_argument("--unlabeled", type=int, default=64,
                   help="scenes without masks (their truth in train/unlabeled_truth)")
    p.add_argument("--test", type=int, default=8, help="test scenes (answers in test_answers)")
    p.add_argument("--size", type=parse_size, default="256x320", help="HxW, e.g. 1024x1360")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    p.add_argument("--magnification", type=float, default=1.0,
                   help="draw bodies and textures this many times larger in pixels (the demo: 2.5 at 192x256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("finetune", help="supervised training on the labeled masks")
    _add_train_arguments(p)

    p = sub.add_parser("pretrain", help="train a student on labeled and unlabeled images with a semi-supervised "
                       "method (mean_teacher on pseudo-labels, or online unimatch)")
    _add_train_arguments(p)
    p.add_argument("--pseudo-labels", help="folder written by `ssl-seg pseudo-label`; without it the unlabeled "
                   "images of --data are learned online, through the method's consistency alone")
    p.add_argument("--labeled-ratio", type=float,
                   help=f"share of each batch drawn from the labeled masks (default: {TrainConfig.labeled_ratio})")

    p = sub.add_parser("pseudo-label", help="label unlabeled images with a teacher (+ DINOv2 / SAM / superpixels)")
    p.add_argument("--checkpoint", required=True, help="teacher checkpoint (.pth or run folder)")
    p.add_argument("--images", required=True, help="folder of unlabeled images, or a dataset root")
    p.add_argument("--out", required=True)
    p.add_argument("--config",
                   help="YAML config: refine, sam, superpixel_method, dinov2_features, pseudo_threshold, tta keys")
    p.add_argument("--refine", choices=["none", "superpixel", "sam"],
                   help="snap labels to image boundaries (default: none)")
    p.add_argument("--sam", help="SAM hub id or local folder (with --refine sam)")
    p.add_argument("--superpixel", choices=["slic", "felzenszwalb"],
                   help="superpixel algorithm of --refine superpixel (default: slic)")
    p.add_argument("--dinov2", help="DINOv2 hub id or local folder: feature teacher fitted on --labeled")
    p.add_argument("--labeled", help="labeled dataset for the DINOv2 class prototypes")
    p.add_argument("--binary-class", help="class of 0/255 binary masks in the --labeled dataset")
    p.add_argument("--local-files-only", action="store_true", default=None)
    p.add_argument("--threshold", type=float, help="confidence below which pixels are ignored (255) (default: 0.9)")
    p.add_argument("--class-balance", type=float,
                   help="each predicted class keeps at least this share of its most confident pixels "
                        "(class-balanced self-training, Zou et al. 2018; default 0: off)")
    p.add_argument("--tta", type=int, choices=[1, 2, 8], help="flip/rot90 views averaged (default: 1)")
    p.add_argument("--tile-size", type=int, help="sliding-window tile (default: 512)")
    p.add_argument("--shard", default="0/1", help="i/n: label only every n-th image starting at i")
    p.add_argument("--images-at-once", type=int, metavar="N",
                   help="images labelled concurrently, so that one's CPU work overlaps another's GPU work; "
                        "the files do not depend on it (default: 4 on CUDA, 1 on CPU)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("predict", help="write <id>_pred.npy masks for a folder of images",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pth or run folder)")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="folder for <id>_pred.npy (and predict.json, the settings)")
    p.add_argument("--tta", type=int, default=1, choices=[1, 2, 8], help="flip/rot90 views averaged")
    p.add_argument("--tile-size", type=int, default=512, help="sliding-window tile in pixels")
    p.add_argument("--overlays", action="store_true", help="also write colour overlays to OUT/overlays/")
    p.add_argument("--skip-existing", action="store_true",
                   help="keep the masks already in --out (finishes an interrupted run of the same checkpoint)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="score <id>_pred.npy against labels (micro Jaccard as in SS2)")
    p.add_argument("--pred", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--binary-class", help="class of 0/255 binary label masks")
    p.add_argument("--json", help="also write the numbers to this JSON file")

    from ssl_seg.report.cli import add_arguments as add_report_arguments

    p = sub.add_parser("report", help="maceral composition report (CSV + HTML) from predicted masks",
                       formatter_class=DefaultsHelpFormatter)
    add_report_arguments(p)

    p = sub.add_parser("demo", help="the whole loop on a procedural dataset, with a score table")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", help="YAML with demo settings (default: the built-in demo budget)")
    p.add_argument("--no-progress", action="store_true")
    return parser


def _train_config(args: argparse.Namespace):
    from ssl_seg.config import apply_overrides, load_config

    overrides = {key: getattr(args, key) for key in TRAIN_FLAGS if getattr(args, key, None) is not None}
    if args.local_files_only:
        overrides["local_files_only"] = True
    for key in ("pseudo_labels", "labeled_ratio"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    base, latest = None, Path(args.out) / "latest.pth"
    if args.resume and latest.is_file():  # the run's own settings; flags given now override them
        from ssl_seg.train.checkpoint import load_checkpoint
        from ssl_seg.train.resume import saved_config

        base = saved_config(load_checkpoint(latest, mmap=True))
    cfg = load_config(args.config, overrides, base=base)
    return apply_overrides(cfg, args.set)


def run(args: argparse.Namespace) -> int:
    if args.command == "synth":
        from ssl_seg.data.synthetic import write_dataset

        summary = write_dataset(args.out, args.labeled, args.unlabeled, args.test, args.size, args.seed,
                                progress=not args.no_progress, magnification=args.magnification)
        print(json.dumps(summary, indent=2))
    elif args.command in ("finetune", "pretrain"):
        from ssl_seg.train.loop import train

        cfg = _train_config(args)
        summary = train(cfg, args.data, args.out, mode=args.command, resume=args.resume,
                        progress=not args.no_progress, stop_after=args.stop_after)
        if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
            return 0
        if summary:
            print(f"final eval: micro Jaccard macerals {summary['micro_jaccard_macerals']:.4f}, "
                  f"all classes {summary['micro_jaccard_all']:.4f}")
        written = [str(path) for path in (Path(args.out) / "best.pth", Path(args.out) / "latest.pth") if path.is_file()]
        print(f"checkpoints: {', '.join(written)}")
        print(f"watch: tensorboard --logdir {Path(args.out) / 'tb'}")
    elif args.command == "pseudo-label":
        from ssl_seg.pseudo.run import pseudo_label

        from ssl_seg.config import apply_overrides, check_config, load_config

        flags = {"refine": args.refine, "sam": args.sam, "superpixel_method": args.superpixel,
                 "dinov2_features": args.dinov2, "device": args.device,
                 "pseudo_threshold": args.threshold, "pseudo_class_balance": args.class_balance,
                 "tta": args.tta, "infer_tile_size": args.tile_size,
                 "local_files_only": args.local_files_only, "binary_class": args.binary_class}
        cfg = check_config(apply_overrides(load_config(args.config, {k: v for k, v in flags.items() if v is not None}),
                                           args.set))
        try:
            shard_index, shard_count = (int(v) for v in args.shard.split("/"))
        except ValueError:
            raise ValueError(f"--shard must look like 0/4 (index/count), not {args.shard!r}") from None
        stats = pseudo_label(args.checkpoint, args.images, args.out, refine=cfg.refine, sam=cfg.sam,
                             dinov2=cfg.dinov2_features, labeled=args.labeled, binary_class=cfg.binary_class,
                             local_files_only=cfg.local_files_only,
                             threshold=cfg.pseudo_threshold, tta=cfg.tta, tile_size=cfg.infer_tile_size,
                             shard=(shard_index, shard_count), device=cfg.device, progress=not args.no_progress,
                             class_balance=cfg.pseudo_class_balance, superpixel_method=cfg.superpixel_method,
                             images_at_once=args.images_at_once)
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps(stats, indent=2))
    elif args.command == "predict":
        from ssl_seg.predict import predict_folder

        written = predict_folder(args.checkpoint, args.images, args.out, args.tile_size, args.tta, args.overlays,
                                 args.device, skip_existing=args.skip_existing, progress=not args.no_progress)
        print(f"wrote {len(written)} masks to {args.out}")
    elif args.command == "evaluate":
        from ssl_seg import class_code
        from ssl_seg.data.io import save_json
        from ssl_seg.evaluate import evaluate_dirs, format_report

        if args.json and Path(args.json).is_dir():
            raise ValueError(f"--json {args.json} is a folder; name a file, e.g. {Path(args.json) / 'scores.json'}")
        binary = class_code(args.binary_class) if args.binary_class else None
        result = evaluate_dirs(args.pred, args.labels, binary_class=binary)
        print(format_report(result))
        if args.json:  # strict JSON: NaN (a class absent from truth and prediction) becomes null
            save_json(args.json, json.loads(json.dumps(result), parse_constant=lambda _: None))
    elif args.command == "report":
        from ssl_seg.report.cli import run as run_report

        return run_report(args)
    elif args.command == "demo":
        from ssl_seg.demo import run_demo

        run_demo(args.out, seed=args.seed, config=args.config, progress=not args.no_progress)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ValueError as exc:  # bad input: DataError, TrainError, CheckpointError, ModelLoadError are ValueErrors
        from ssl_seg.errors import one_line

        print(f"ssl-seg {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of our output (`| head`) has closed it: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would fail again
        return 141  # 128 + SIGPIPE, as a shell reports a command stopped by a closed pipe
    except OSError as exc:  # a path that cannot be read or written: a file where a folder goes, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ssl-seg {args.command}: error: {where}{exc.strerror or exc}; fix: check the path, its permissions "
              "and free space", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 says it for all
            return 130
        resume = "add --resume to the same command to continue from the last saved step"
        how = {"finetune": resume, "pretrain": resume,
               "predict": "add --skip-existing to the same command to keep the masks already written"
               }.get(args.command, "rerun the same command to continue")
        done = f" ({exc})" if str(exc) else ""
        print(f"ssl-seg {args.command}: interrupted{done}; {how}", file=sys.stderr)
        return 130
    finally:
        dist = sys.modules.get("torch.distributed")  # not imported by evaluate or report: not needed then
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # a gloo group still alive at exit can abort the process (SIGABRT)


if __name__ == "__main__":
    sys.exit(main())
