"""ssl-seg <command>: semi-supervised segmentation of kerogen macerals. The loop, in order: synth, finetune,
pseudo-label, pretrain, predict, evaluate, export, report; demo runs it all on procedural data."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path

from ssl_seg.config import TrainConfig

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


def config_flags(command: str) -> list[dataclasses.Field]:
    """The TrainConfig fields that are flags of ``command`` (finetune: "train"; pretrain: "train" and "pretrain")."""
    kinds = {"finetune": ("train",), "pretrain": ("train", "pretrain")}[command]
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("flag") in kinds]


def _add_config_flag(parser: argparse.ArgumentParser, spec: dataclasses.Field) -> None:
    """``--name`` from the field's declaration; left out, the --config value or this default stays."""
    name, default, meta = "--" + spec.name.replace("_", "-"), spec.default, spec.metadata
    shown = "" if default is None or isinstance(default, bool) else f" (default: {default})"
    if isinstance(default, bool):
        parser.add_argument(name, action="store_true", default=None, help=meta["help"])
    else:
        kind = type(default) if default is not None else str
        parser.add_argument(name, type=kind, choices=meta["choices"], help=meta["help"] + shown)


def _add_train_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--data", required=True, help="dataset folder (SS2 layout or images/ + masks/)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints and TensorBoard logs (tb/)")
    parser.add_argument("--config", help="YAML training config, e.g. experiments/ss2_segformer.yaml")
    for spec in config_flags(command):
        _add_config_flag(parser, spec)
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
    p.add_argument("--unlabeled", type=int, default=64, help="scenes without masks")
    p.add_argument("--unlabeled-truth", action="store_true",
                   help="also write the unlabeled scenes' masks to train/unlabeled_truth/: pretrain logs how good "
                        "its online pseudo-labels are against them (never trained on)")
    p.add_argument("--test", type=int, default=8, help="test scenes (answers in test_answers)")
    p.add_argument("--size", type=parse_size, default="256x320", help="HxW, e.g. 1024x1360")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    p.add_argument("--magnification", type=float, default=1.0,
                   help="draw bodies and textures this many times larger in pixels (the demo: 2.5 at 192x256)")
    # checked by write_dataset (LABELED_MODES), which the parser does not import: it loads torch
    p.add_argument("--labeled-modes", default="random", metavar="random|alternate",
                   help="light of the labeled scenes: drawn by chance like the others, or white and fluorescent in "
                        "turn, so that even a few labeled scenes show both")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("finetune", help="supervised training on the labeled masks")
    _add_train_arguments(p, "finetune")

    p = sub.add_parser("pseudo-label", help="label unlabeled images with a teacher (+ DINOv2 / SAM / superpixels)")
    p.add_argument("--checkpoint", required=True, help="teacher checkpoint (.pth or run folder)")
    p.add_argument("--images", required=True, nargs="+", metavar="IMAGES",
                   help="folders of unlabeled images, dataset roots, or .txt files listing image paths (one a line); "
                        "ids (file names without suffix) must be unique across them")
    p.add_argument("--out", required=True, help="pseudo-label folder to write (docs/pseudo-label-folder.md)")
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
    p.add_argument("--local-files-only", action="store_true", default=None,
                   help="never reach the hub; load --sam and --dinov2 from the local cache or folder")
    p.add_argument("--threshold", type=float, help="confidence below which pixels are ignored (255) (default: 0.9)")
    p.add_argument("--class-balance", type=float,
                   help="each predicted class keeps at least this share of its most confident pixels "
                        "(class-balanced self-training, Zou et al. 2018; default 0: off)")
    p.add_argument("--tta", type=int, choices=[1, 2, 8], help="flip/rot90 views averaged (default: 1)")
    p.add_argument("--tile-size", type=int, help="sliding-window tile (default: 512)")
    p.add_argument("--shard", default="0/1", help="i/n: label only every n-th image starting at i")
    p.add_argument("--batch-images", type=int, metavar="N",
                   help="images of one size per teacher call, their tiles batched together; the files do not "
                        "depend on it (default: 8 on CUDA, 1 on CPU)")
    p.add_argument("--images-at-once", type=int, metavar="N",
                   help="images labelled concurrently, in batches of --batch-images, so that one batch's CPU work "
                        "overlaps another's GPU work; the files do not depend on it (default: two batches on CUDA, "
                        "one on CPU)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("pretrain", help="train a student on labeled and unlabeled images with a semi-supervised "
                       "method (mean_teacher on pseudo-labels, or online unimatch)")
    _add_train_arguments(p, "pretrain")

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
    p.add_argument("--pred", required=True, help="folder of <id>_pred.npy masks (the --out of predict)")
    p.add_argument("--labels", required=True, help="folder of the true masks (<id>_gt.npy or <id>.png/.npy)")
    p.add_argument("--binary-class", help="class of 0/255 binary label masks")
    p.add_argument("--json", help="also write the numbers to this JSON file")

    p = sub.add_parser("export", help="write a SegFormer or DINOv2 checkpoint as a folder that transformers loads "
                                      "(from_pretrained, push_to_hub)")
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pth or run folder)")
    p.add_argument("--out", required=True, help="new folder: config.json, model.safetensors, preprocessor_config.json")

    from ssl_seg.report.cli import add_arguments as add_report_arguments

    p = sub.add_parser("report", help="maceral composition report (CSV + HTML) from predicted masks",
                       formatter_class=DefaultsHelpFormatter)
    add_report_arguments(p)

    p = sub.add_parser("demo", help="the whole loop on a procedural dataset, with a score table")
    p.add_argument("--out", default="demo_out", help="folder for the dataset, runs, predictions and report")
    p.add_argument("--seed", type=int, default=0, help="seed of the dataset and of every run")
    p.add_argument("--config", help="YAML with demo settings (default: the built-in demo budget)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _train_config(args: argparse.Namespace):
    from ssl_seg.config import apply_overrides, load_config

    overrides = {spec.name: getattr(args, spec.name) for spec in config_flags(args.command)
                 if getattr(args, spec.name) is not None}
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
                                progress=not args.no_progress, magnification=args.magnification,
                                unlabeled_truth=args.unlabeled_truth, labeled_modes=args.labeled_modes)
        summary.pop("scene_modes")  # one line per scene: for scripts, not the terminal
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

        from ssl_seg.config import PseudoLabelConfig, apply_overrides, check_config, load_config

        flags = {"refine": args.refine, "sam": args.sam, "superpixel_method": args.superpixel,
                 "dinov2_features": args.dinov2, "device": args.device,
                 "pseudo_threshold": args.threshold, "pseudo_class_balance": args.class_balance,
                 "tta": args.tta, "infer_tile_size": args.tile_size,
                 "local_files_only": args.local_files_only, "binary_class": args.binary_class}
        cfg = load_config(args.config, {k: v for k, v in flags.items() if v is not None}, base=PseudoLabelConfig())
        cfg = check_config(apply_overrides(cfg, args.set))
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
                             images_at_once=args.images_at_once, batch_images=args.batch_images)
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
    elif args.command == "export":
        from ssl_seg.export import export_checkpoint

        print(f"wrote {export_checkpoint(args.checkpoint, args.out)}: transformers' AutoModelForSemanticSegmentation"
              ".from_pretrained loads it (its README.md shows how)")
    elif args.command == "report":
        from ssl_seg.report.cli import run as run_report

        return run_report(args)
    elif args.command == "demo":
        from ssl_seg.demo import run_demo

        run_demo(args.out, seed=args.seed, config=args.config, progress=not args.no_progress)
    return 0


def _sigterm_as_ctrl_c(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would report these as the top-level parser's, without the command's name
        parser._subparsers._group_actions[0].choices[args.command].error(
            f"unrecognized arguments: {' '.join(unknown)}")
    previous = None
    # predict and pseudo-label stop on SIGTERM (a scheduler's preemption) as on Ctrl-C: finished images are kept
    if (args.command in ("predict", "pseudo-label") and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        previous = signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
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
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        dist = sys.modules.get("torch.distributed")  # not imported by evaluate or report: not needed then
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # a gloo group still alive at exit can abort the process (SIGABRT)


if __name__ == "__main__":
    sys.exit(main())
