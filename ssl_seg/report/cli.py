"""Arguments of ``ssl-seg report`` and the function that runs it, for ``ssl_seg.cli`` to mount.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="ssl-seg report")
>>> add_arguments(parser)
>>> parser.parse_args(["--pred", "preds", "--out", "rep"]).bootstrap
2000
"""

from __future__ import annotations

import argparse

from ssl_seg.report.build import build_report, format_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``report`` options to ``parser`` (a subcommand parser or a standalone one)."""
    parser.add_argument("--pred", required=True, help="folder of <id>_pred.npy predicted masks")
    parser.add_argument("--out", required=True, help="folder for composition.csv, objects.csv and report.html")
    parser.add_argument("--images", default=None, help="folder of the predicted images: adds overlay thumbnails")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--samples", default=None, help="CSV with columns image,sample grouping images into samples")
    group.add_argument(
        "--sample-pattern",
        default=None,
        help="regex searched in each image id; its first group (or whole match) is the sample name "
        "(default without --samples: all images form one sample 'all')",
    )
    parser.add_argument("--run-dir", default=None, help="also write the summary to TensorBoard: a training run "
                        "folder (into its tb/) or a log folder")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument(
        "--points", type=int, default=500, help="points of the equivalent point count (ISO 7404-3: 500)"
    )
    parser.add_argument("--thumbnails", type=int, default=6, help="overlay thumbnails on the page (with --images)")
    parser.add_argument("--min-object-pixels", type=int, default=1, help="smallest object counted in object statistics")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")


def run(args: argparse.Namespace) -> int:
    """Build the report from parsed arguments and print its summary (``ssl-seg`` turns bad input
    into a one-line error)."""
    result = build_report(
        args.pred,
        args.out,
        images_dir=args.images,
        samples_csv=args.samples,
        sample_pattern=args.sample_pattern,
        run_dir=args.run_dir,
        bootstrap=args.bootstrap,
        points=args.points,
        seed=args.seed,
        thumbnails=args.thumbnails,
        min_object_pixels=args.min_object_pixels,
    )
    print(format_summary(result))
    return 0
