"""``build_report``: predicted masks in, composition.csv + objects.csv + report.html out."""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ssl_seg.data.io import (
    DataError,
    atomic_write,
    overlay,
    read_image,
    read_prediction,
)
from ssl_seg.data.layout import list_images
from ssl_seg.evaluate import find_predictions
from ssl_seg.report.composition import (
    DEFAULT_SAMPLE,
    MACERALS,
    ImageMeasurement,
    SampleSummary,
    composition_columns,
    group_samples,
    measure_image,
    object_columns,
    object_rows,
    summarize_sample,
)
from ssl_seg.report.html import Thumbnail, render_page
from ssl_seg.report.plots import (
    composition_bars_figure,
    figure_png,
    size_histogram_figure,
    ternary_figure,
)

THUMBNAIL_WIDTH = 320
OVERLAY_ALPHA = 0.45
COMPOSITION_CSV = "composition.csv"
OBJECTS_CSV = "objects.csv"
REPORT_HTML = "report.html"


def _csv_cell(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return value


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, object]]) -> None:
    """Atomically write rows (dicts keyed by ``columns``); NaN becomes an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: _csv_cell(row[column]) for column in columns})
    with atomic_write(path) as temp:
        temp.write_text(buffer.getvalue(), encoding="utf-8")


def _pick_thumbnails(
    by_sample: dict[str, list[ImageMeasurement]], available: set[str], count: int
) -> list[ImageMeasurement]:
    """Up to ``count`` images that have a picture, taken round-robin over samples."""
    queues = [[m for m in measurements if m.image_id in available] for measurements in by_sample.values()]
    picked: list[ImageMeasurement] = []
    depth = 0
    while len(picked) < count and any(depth < len(queue) for queue in queues):
        for queue in queues:
            if depth < len(queue) and len(picked) < count:
                picked.append(queue[depth])
        depth += 1
    return picked


def make_thumbnail(image_path: Path, measurement: ImageMeasurement, sample: str) -> Thumbnail:
    """Overlay of the predicted classes on the image, downscaled to at most 320 px wide, as JPEG."""
    image = read_image(image_path)
    mask = read_prediction(measurement.path)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"{measurement.path}: prediction shape {mask.shape} differs from image {image_path} "
            f"size {image.shape[:2]}; fix: pass the images the predictions were made from"
        )
    picture = Image.fromarray(overlay(image, mask, OVERLAY_ALPHA))
    if picture.width > THUMBNAIL_WIDTH:
        height = max(1, round(picture.height * THUMBNAIL_WIDTH / picture.width))
        picture = picture.resize((THUMBNAIL_WIDTH, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    organic = measurement.counts[1:].sum()
    shares = (
        ", ".join(
            f"{name[0].upper()} {measurement.counts[index + 1] / organic * 100:.0f}%"
            for index, name in enumerate(MACERALS)
        )
        if organic
        else "no organic matter"
    )
    return Thumbnail(buffer.getvalue(), "image/jpeg", f"{measurement.image_id} ({sample}): {shares}")


def _tags(names: Sequence[str]) -> list[str]:
    """TensorBoard-safe tags of sample names, one each: ``a b`` and ``a/b`` become ``a_b`` and ``a_b_2``."""
    tags: list[str] = []
    for name in names:
        tag = base = re.sub(r"[^A-Za-z0-9_.\-]+", "_", name) or "_"
        number = 2
        while tag in tags:
            tag, number = f"{base}_{number}", number + 1
        tags.append(tag)
    return tags


def tensorboard_dir(run_dir: str | Path) -> Path:
    """A training run's folder logs to its ``tb/`` (what ``tensorboard --logdir RUN/tb`` shows); any other
    folder is a TensorBoard log folder itself."""
    run_dir = Path(run_dir)
    return run_dir / "tb" if (run_dir / "tb").is_dir() else run_dir


def write_tensorboard(run_dir: str | Path, samples: Sequence[SampleSummary], ternary_png: bytes) -> None:
    """Per-sample fractions as scalars ``report/<sample>/<name>`` (step 0), the ternary diagram
    as image ``report/ternary`` and the sample table as text ``report/composition``."""
    from ssl_seg.tb import summary_writer

    with summary_writer(tensorboard_dir(run_dir)) as writer:
        lines = ["| sample | images | " + " | ".join(f"{m} % of organic" for m in MACERALS) + " |"]
        lines.append("|---" * (2 + len(MACERALS)) + "|")
        for summary, tag in zip(samples, _tags([summary.name for summary in samples])):
            row = summary.row
            prefix = f"report/{tag}"
            writer.add_scalar(f"{prefix}/organic_field_fraction", _finite(row["organic_field_fraction"]), 0)
            for maceral in MACERALS:
                for suffix in (
                    "organic_fraction",
                    "field_fraction",
                    "organic_fraction_ci_low",
                    "organic_fraction_ci_high",
                ):
                    value = float(row[f"{maceral}_{suffix}"])  # type: ignore[arg-type]
                    if not math.isnan(value):
                        writer.add_scalar(f"{prefix}/{maceral}_{suffix}", value, 0)
            shares = " | ".join(_percent_text(row[f"{m}_organic_fraction"]) for m in MACERALS)
            lines.append(f"| {summary.name} | {row['n_images']} | {shares} |")
        figure = np.asarray(Image.open(io.BytesIO(ternary_png)).convert("RGB"))
        writer.add_image("report/ternary", figure, 0, dataformats="HWC")
        writer.add_text("report/composition", "\n".join(lines), 0)


def _finite(value: object) -> float:
    number = float(value)  # type: ignore[arg-type]
    return 0.0 if math.isnan(number) else number


def _percent_text(value: object) -> str:
    number = float(value)  # type: ignore[arg-type]
    return "-" if math.isnan(number) else f"{number * 100:.1f}"


def build_report(
    pred_dir: str | Path,
    out_dir: str | Path,
    images_dir: str | Path | None = None,
    samples_csv: str | Path | None = None,
    sample_pattern: str | None = None,
    run_dir: str | Path | None = None,
    bootstrap: int = 2000,
    points: int = 500,
    seed: int = 0,
    thumbnails: int = 6,
    min_object_pixels: int = 1,
) -> dict[str, Any]:
    """Maceral composition of every ``<id>_pred.npy`` in ``pred_dir``, per image and per sample.

    Samples: ``samples_csv`` (columns ``image,sample``), or ``sample_pattern`` (regex searched
    in the image id; first group or whole match), or by default all images form one sample
    named ``all``. Writes ``composition.csv``, ``objects.csv`` and ``report.html`` to
    ``out_dir`` (atomically); with ``images_dir``, the page shows up to ``thumbnails`` overlays;
    with ``run_dir``, the summary also goes to TensorBoard. ``min_object_pixels`` drops
    smaller objects from the object statistics only (never from the fractions).

    Returns ``{"paths": {...}, "samples": [sample rows], "images": [image rows], "objects": [rows]}``.
    Raises DataError (one line, naming the file) for a missing/empty folder or a bad prediction.

    >>> result = build_report("preds/", "report/", sample_pattern=r"^([A-Z]+\\d+)_")  # doctest: +SKIP
    >>> result["paths"]["report_html"]  # doctest: +SKIP
    PosixPath('report/report.html')
    """
    for name, value, minimum in (
        ("bootstrap", bootstrap, 0),
        ("points", points, 1),
        ("thumbnails", thumbnails, 0),
        ("min_object_pixels", min_object_pixels, 1),
    ):
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    predictions = find_predictions(pred_dir)
    sample_of = group_samples(list(predictions), samples_csv, sample_pattern)
    images = {path.stem: path for path in list_images(images_dir)} if images_dir is not None else None
    if images is not None and not set(images) & set(predictions):
        raise DataError(
            f"{images_dir}: none of its {len(images)} image(s) matches a prediction id "
            f"(e.g. {next(iter(predictions))}); "
            "fix: pass the folder of the images that were predicted"
        )

    by_sample: dict[str, list[ImageMeasurement]] = {}
    for image_id, path in predictions.items():
        by_sample.setdefault(sample_of[image_id], []).append(measure_image(image_id, path, min_object_pixels))
    by_sample = dict(sorted(by_sample.items()))

    summaries = [summarize_sample(name, measured, bootstrap, points, seed) for name, measured in by_sample.items()]
    objects = [row for name, measured in by_sample.items() for row in object_rows(name, measured)]
    areas = {
        name: {m: np.concatenate([x.objects[m][0] for x in measured]) for m in MACERALS}
        for name, measured in by_sample.items()
    }

    # Thumbnails first: a mismatched image is refused before the slower plotting.
    thumbs = None
    if images is not None:
        picked = _pick_thumbnails(by_sample, set(images), thumbnails)
        thumbs = [make_thumbnail(images[m.image_id], m, sample_of[m.image_id]) for m in picked]
    figures = {
        "ternary": figure_png(ternary_figure(summaries, seed)),
        "bars": figure_png(composition_bars_figure(summaries)),
        "sizes": figure_png(size_histogram_figure(areas, list(by_sample))),
    }

    if samples_csv is not None:
        grouping = f"from {Path(samples_csv).name}"
    elif sample_pattern is not None:
        grouping = f"by pattern {sample_pattern}"
    else:
        grouping = f"not grouped: all images form the sample '{DEFAULT_SAMPLE}'"
    page = render_page(
        title="Maceral composition report",
        source=str(pred_dir),
        samples=summaries,
        object_rows=objects,
        figures=figures,
        thumbnails=thumbs,
        bootstrap=bootstrap,
        points=points,
        grouping=grouping,
        min_object_pixels=min_object_pixels,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "composition_csv": out_dir / COMPOSITION_CSV,
        "objects_csv": out_dir / OBJECTS_CSV,
        "report_html": out_dir / REPORT_HTML,
    }
    composition = [row for s in summaries for row in (s.row, *s.image_rows)]
    write_csv(paths["composition_csv"], composition_columns(), composition)
    write_csv(paths["objects_csv"], object_columns(), objects)
    with atomic_write(paths["report_html"]) as temp:
        temp.write_text(page, encoding="utf-8")
    if run_dir is not None:
        write_tensorboard(run_dir, summaries, figures["ternary"])
        paths["run_dir"] = tensorboard_dir(run_dir)
    return {
        "bootstrap": bootstrap,
        "paths": paths,
        "samples": [s.row for s in summaries],
        "images": [row for s in summaries for row in s.image_rows],
        "objects": objects,
    }


def format_summary(result: dict[str, Any]) -> str:
    """A short text table of the per-sample composition (for the command line)."""
    header = f"{'sample':<16} {'images':>6} {'organic%':>9} " + " ".join(f"{m[:10] + ' %':>22}" for m in MACERALS)
    lines = [header]
    for row in result["samples"]:
        cells = []
        for maceral in MACERALS:
            value = _percent_text(row[f"{maceral}_organic_fraction"])
            low, high = row[f"{maceral}_organic_fraction_ci_low"], row[f"{maceral}_organic_fraction_ci_high"]
            if math.isnan(float(low)):
                low, high = row[f"{maceral}_points_ci_low"], row[f"{maceral}_points_ci_high"]
            cells.append(f"{value:>6} [{_percent_text(low):>5}-{_percent_text(high):>5}]".rjust(22))
        lines.append(
            f"{str(row['sample'])[:16]:<16} {row['n_images']:>6} {_percent_text(row['organic_field_fraction']):>9} "
            + " ".join(cells)
        )
    lines.append("intervals: bootstrap 95% over images (point-count interval for single-image samples)"
                 if result.get("bootstrap", 1) else "intervals: 95% point-count interval (--bootstrap 0)")
    lines += [f"{key}: {path}" for key, path in result["paths"].items()]
    return "\n".join(lines)
