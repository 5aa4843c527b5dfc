"""Maceral composition of predicted masks: pixel counts, fractions, intervals, object statistics.

This module only computes; writing CSV/HTML/TensorBoard lives in ``ssl_seg.report.build``.

Two uncertainties are reported for the organic fractions of a sample:

- a bootstrap 95% interval over the sample's *images* (resampled with replacement), which
  captures how much the composition varies from field to field; it narrows as images are added;
- the Wilson 95% interval of an equivalent ISO 7404-3 point count (``points`` points, 500 by
  default, landing on organic matter), i.e. what a petrographer's count at that composition
  would carry.

>>> low, high = wilson_interval(0.5, 500)
>>> round(float(low), 4), round(float(high), 4)
(0.4563, 0.5437)
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssl_seg import CLASS_NAMES, NUM_CLASSES
from ssl_seg.data.io import IMAGE_SUFFIXES, MASK_SUFFIXES, DataError, csv_rows, read_prediction
from ssl_seg.evaluate import PRED_SUFFIX, format_ids

MACERALS = CLASS_NAMES[1:]
DEFAULT_SAMPLE = "all"
# Two-sided 95%: the normal quantile used by the Wilson interval.
Z_95 = 1.959963984540054


# --------------------------------------------------------------------------- intervals


def wilson_interval(fraction, n: int, z: float = Z_95):
    """Wilson score interval of a binomial proportion ``fraction`` observed on ``n`` trials.

    Vectorised over ``fraction``; NaN fractions give NaN bounds. With ``n`` = 500 this is the
    interval of a 500-point count (ISO 7404-3) that found that fraction.

    >>> [round(float(v), 5) for v in wilson_interval(0.0, 500)]
    [0.0, 0.00762]
    """
    if n < 1:
        raise ValueError(f"point count must be >= 1, got {n}")
    p = np.asarray(fraction, dtype=np.float64)
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * np.sqrt(np.clip(p * (1 - p), 0.0, None) / n + z2 / (4 * n * n))
    # Exact ends at p = 0 and 1 (rounding would leave ~1e-19 there).
    low = np.where(p <= 0.0, 0.0, np.clip(centre - half, 0.0, 1.0))
    high = np.where(p >= 1.0, 1.0, np.clip(centre + half, 0.0, 1.0))
    return low, high


def organic_fractions(counts: np.ndarray) -> np.ndarray:
    """Per-maceral share of organic pixels from class counts (..., NUM_CLASSES); NaN without organic matter."""
    counts = np.asarray(counts, dtype=np.float64)
    organic = counts[..., 1:].sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(organic > 0, counts[..., 1:] / np.where(organic > 0, organic, 1), np.nan)


def bootstrap_organic_fractions(image_counts: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Organic fractions (replicates x macerals) of the pooled counts of images resampled with replacement.

    Replicates whose resampled images hold no organic matter are NaN.
    """
    image_counts = np.asarray(image_counts, dtype=np.int64)
    n_images = image_counts.shape[0]
    results = []
    # Resampling as multinomial image weights: replicates x images, kept under ~16 MB per chunk.
    chunk = max(1, 2_000_000 // max(n_images, 1))
    for start in range(0, replicates, chunk):
        size = min(chunk, replicates - start)
        weights = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=size)
        results.append(organic_fractions(weights @ image_counts))
    return np.concatenate(results, axis=0) if results else np.empty((0, len(MACERALS)))


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column, ignoring NaN replicates; NaN where a column has none."""
    tail = (1.0 - level) / 2.0 * 100.0
    low = np.full(replicates.shape[1], np.nan)
    high = np.full(replicates.shape[1], np.nan)
    for column in range(replicates.shape[1]):
        values = replicates[:, column]
        values = values[~np.isnan(values)]
        if values.size:
            low[column], high[column] = np.percentile(values, [tail, 100.0 - tail])
    return low, high


# --------------------------------------------------------------------------- inputs


def image_id_of(name: str) -> str:
    """The image id in a file name or id: strips folders, ``_pred.npy`` and known image/mask suffixes."""
    name = Path(name.strip()).name
    if name.endswith(PRED_SUFFIX):
        return name[: -len(PRED_SUFFIX)]
    suffix = Path(name).suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in MASK_SUFFIXES:
        return name[: -len(suffix)]
    return name


def samples_from_csv(csv_path: str | Path, image_ids: Sequence[str]) -> dict[str, str]:
    """Map image id -> sample from a CSV with header columns ``image,sample``.

    ``image`` may be an id or a file name. Rows for images that have no prediction are
    ignored; every predicted image must have a row.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: samples CSV not found; fix: check the --samples path")
    header, *rows = csv_rows(csv_path) or [[]]
    columns = {name.strip().lower(): i for i, name in enumerate(header)}
    if "image" not in columns or "sample" not in columns:
        raise DataError(
            f"{csv_path}: header {header} lacks the columns 'image' and 'sample'; "
            "fix: start the file with the line 'image,sample'"
        )
    mapping: dict[str, str] = {}
    for line_number, row in enumerate(rows, start=2):
        image, sample = (row[columns[name]].strip() if columns[name] < len(row) else ""
                         for name in ("image", "sample"))
        if not image and not sample:
            continue
        if not image or not sample:
            raise DataError(f"{csv_path}:{line_number}: empty image or sample; fix: fill both columns")
        image_id = image_id_of(image)
        if mapping.get(image_id, sample) != sample:
            raise DataError(
                f"{csv_path}:{line_number}: image {image_id!r} is in samples {mapping[image_id]!r} and {sample!r}; "
                "fix: give each image one sample"
            )
        mapping[image_id] = sample
    missing = [image_id for image_id in image_ids if image_id not in mapping]
    if missing:
        raise DataError(
            f"{csv_path}: no sample for {len(missing)} predicted image(s): {format_ids(missing)}; "
            "fix: add an 'image,sample' row for each"
        )
    return {image_id: mapping[image_id] for image_id in image_ids}


def samples_from_pattern(pattern: str, image_ids: Sequence[str]) -> dict[str, str]:
    """Map image id -> sample by a regular expression searched in the id: its first group, or
    the whole match when it has no group (``r"^[^_]+"`` groups ``S12_003`` under ``S12``)."""
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise DataError(f"sample pattern {pattern!r}: not a valid regular expression ({error})") from None
    mapping: dict[str, str] = {}
    unmatched = []
    for image_id in image_ids:
        match = regex.search(image_id)
        sample = (match.group(1) if regex.groups else match.group(0)) if match else None
        if not sample:
            unmatched.append(image_id)
        else:
            mapping[image_id] = sample
    if unmatched:
        raise DataError(
            f"sample pattern {pattern!r}: no sample name in {len(unmatched)} image id(s): {format_ids(unmatched)}; "
            "fix: use a pattern whose first group (or whole match) is non-empty for every id"
        )
    return mapping


def group_samples(
    image_ids: Sequence[str], samples_csv: str | Path | None = None, sample_pattern: str | None = None
) -> dict[str, str]:
    """Image id -> sample name: by CSV, by pattern, or every image in one sample named ``all``."""
    if samples_csv is not None and sample_pattern is not None:
        raise DataError("samples: both a samples CSV and a sample pattern were given; fix: pass only one of them")
    if samples_csv is not None:
        return samples_from_csv(samples_csv, image_ids)
    if sample_pattern is not None:
        return samples_from_pattern(sample_pattern, image_ids)
    return {image_id: DEFAULT_SAMPLE for image_id in image_ids}


# --------------------------------------------------------------------------- per image


@dataclass
class ImageMeasurement:
    """What one predicted mask contributes: class pixel counts and its objects per maceral."""

    image_id: str
    path: Path
    shape: tuple[int, int]
    counts: np.ndarray  # (NUM_CLASSES,) int64 pixel counts
    # maceral name -> (areas in pixels, elongations), one entry per connected object
    objects: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def measure_objects(mask: np.ndarray, class_code: int, min_pixels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Areas (pixels) and elongations of the 8-connected objects of ``class_code`` in ``mask``
    with at least ``min_pixels`` pixels.

    Elongation is ``1 - minor/major`` axis of the ellipse with the object's second moments,
    the axes scikit-image's ``regionprops`` reports (``axis_minor_length`` /
    ``axis_major_length``); 0 for a single pixel. Computed with ``np.bincount`` over all
    objects at once: a noisy prediction has tens of thousands of objects, which
    ``regionprops`` would visit one by one.
    """
    from skimage.measure import label

    labelled = label(mask == class_code, connectivity=2)
    count = int(labelled.max())
    if count == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    rows, cols = np.nonzero(labelled)
    ids = labelled[rows, cols]
    areas = np.bincount(ids, minlength=count + 1)[1:]
    rows = rows.astype(np.float64)
    cols = cols.astype(np.float64)
    # Centre per object first, so the second moments do not cancel on large coordinates.
    mean_row = np.bincount(ids, weights=rows, minlength=count + 1)[1:] / areas
    mean_col = np.bincount(ids, weights=cols, minlength=count + 1)[1:] / areas
    d_row = rows - mean_row[ids - 1]
    d_col = cols - mean_col[ids - 1]
    var_row = np.bincount(ids, weights=d_row * d_row, minlength=count + 1)[1:] / areas
    var_col = np.bincount(ids, weights=d_col * d_col, minlength=count + 1)[1:] / areas
    cov = np.bincount(ids, weights=d_row * d_col, minlength=count + 1)[1:] / areas
    # Eigenvalues of the 2x2 covariance: the squared (quarter) axis lengths.
    half_trace = (var_row + var_col) / 2.0
    spread = np.sqrt(((var_row - var_col) / 2.0) ** 2 + cov**2)
    major = np.clip(half_trace + spread, 0.0, None)
    minor = np.clip(half_trace - spread, 0.0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        elongation = np.where(major > 0, 1.0 - np.sqrt(minor / np.where(major > 0, major, 1.0)), 0.0)
    keep = areas >= min_pixels
    return areas[keep].astype(np.int64), np.clip(elongation[keep], 0.0, 1.0)


def measure_image(image_id: str, path: Path, min_object_pixels: int = 1) -> ImageMeasurement:
    """Read one prediction strictly (DataError naming the file) and measure it."""
    mask = read_prediction(path)
    counts = np.bincount(mask.ravel(), minlength=NUM_CLASSES).astype(np.int64)
    objects = {
        name: measure_objects(mask, code, min_object_pixels) for code, name in enumerate(CLASS_NAMES) if code > 0
    }
    return ImageMeasurement(image_id, path, mask.shape, counts, objects)


# --------------------------------------------------------------------------- tables


def _fraction(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else math.nan


def composition_row(
    level: str, sample: str, image: str, counts: np.ndarray, n_images: int, points: int
) -> dict[str, object]:
    """One row of composition.csv (no bootstrap columns: those need the sample's images)."""
    field_pixels = int(counts.sum())
    organic_pixels = int(counts[1:].sum())
    row: dict[str, object] = {
        "level": level,
        "sample": sample,
        "image": image,
        "n_images": n_images,
        "field_pixels": field_pixels,
        "organic_pixels": organic_pixels,
        "organic_field_fraction": _fraction(organic_pixels, field_pixels),
    }
    organic = organic_fractions(counts)
    points_low, points_high = wilson_interval(organic, points)
    for index, name in enumerate(MACERALS):
        pixels = int(counts[index + 1])
        row[f"{name}_pixels"] = pixels
        row[f"{name}_field_fraction"] = _fraction(pixels, field_pixels)
        row[f"{name}_organic_fraction"] = float(organic[index])
        row[f"{name}_organic_fraction_ci_low"] = math.nan
        row[f"{name}_organic_fraction_ci_high"] = math.nan
    row["points"] = points
    for index, name in enumerate(MACERALS):
        row[f"{name}_points_ci_low"] = float(points_low[index])
        row[f"{name}_points_ci_high"] = float(points_high[index])
    return row


@dataclass
class SampleSummary:
    """A sample's composition row, its image rows, and bootstrap replicates for plotting."""

    name: str
    row: dict[str, object]
    image_rows: list[dict[str, object]]
    replicates: np.ndarray  # (bootstrap, macerals) organic fractions; may hold NaN rows


def _sample_rng(seed: int, sample: str) -> np.random.Generator:
    # Per-sample stream: a sample's interval does not depend on which other samples exist.
    return np.random.default_rng([seed, zlib.crc32(sample.encode("utf-8"))])


def summarize_sample(
    name: str, measurements: Sequence[ImageMeasurement], bootstrap: int, points: int, seed: int
) -> SampleSummary:
    """Pool a sample's images (area-weighted) and attach bootstrap intervals over its images.

    The bootstrap interval needs at least two images; with one it stays NaN (use the
    point-count interval then).
    """
    image_counts = np.stack([m.counts for m in measurements])
    row = composition_row("sample", name, "", image_counts.sum(axis=0), len(measurements), points)
    replicates = np.empty((0, len(MACERALS)))
    if bootstrap > 0 and len(measurements) >= 2:
        replicates = bootstrap_organic_fractions(image_counts, bootstrap, _sample_rng(seed, name))
        low, high = percentile_interval(replicates)
        for index, maceral in enumerate(MACERALS):
            row[f"{maceral}_organic_fraction_ci_low"] = float(low[index])
            row[f"{maceral}_organic_fraction_ci_high"] = float(high[index])
    image_rows = [composition_row("image", name, m.image_id, m.counts, 1, points) for m in measurements]
    return SampleSummary(name, row, image_rows, replicates)


def object_rows(sample: str, measurements: Sequence[ImageMeasurement]) -> list[dict[str, object]]:
    """objects.csv rows of one sample: one per maceral."""
    rows = []
    for name in MACERALS:
        areas = np.concatenate([m.objects[name][0] for m in measurements])
        elongations = np.concatenate([m.objects[name][1] for m in measurements])
        has_objects = areas.size > 0
        rows.append(
            {
                "sample": sample,
                "class": name,
                "n_images": len(measurements),
                "object_count": int(areas.size),
                "objects_per_image": areas.size / len(measurements),
                "area_mean_px": float(areas.mean()) if has_objects else math.nan,
                "area_median_px": float(np.median(areas)) if has_objects else math.nan,
                "area_p90_px": float(np.percentile(areas, 90)) if has_objects else math.nan,
                "elongation_mean": float(elongations.mean()) if has_objects else math.nan,
                "elongation_median": float(np.median(elongations)) if has_objects else math.nan,
            }
        )
    return rows


# --------------------------------------------------------------------------- column documentation

# Column -> meaning. The single source for the CSV headers and the README table.
_PER_MACERAL_COMPOSITION = {
    "{m}_pixels": "Pixels predicted as this maceral.",
    "{m}_field_fraction": "This maceral's share of the whole field: `{m}_pixels / field_pixels` (0..1).",
    "{m}_organic_fraction": "This maceral's share of the organic matter: `{m}_pixels / organic_pixels` (0..1); "
    "the three organic fractions of a row sum to 1.",
    "{m}_organic_fraction_ci_low": "Sample rows: 2.5th percentile of `{m}_organic_fraction` over bootstrap "
    "resamples of the sample's images (95% interval; narrows as images are added), leaving out resamples "
    "without organic matter. Empty on image rows, for samples of one image and with `--bootstrap 0`.",
    "{m}_organic_fraction_ci_high": "Sample rows: 97.5th percentile of the same bootstrap (upper 95% bound).",
}
_PER_MACERAL_POINTS = {
    "{m}_points_ci_low": "Lower bound of the Wilson 95% interval of a `points`-point count (ISO 7404-3) "
    "that found `{m}_organic_fraction` (0..1): the uncertainty a petrographer's count would carry.",
    "{m}_points_ci_high": "Upper bound of the same Wilson 95% point-count interval (0..1).",
}
COMPOSITION_DOC: dict[str, str] = {
    "level": "`sample` for a sample's pooled row, `image` for one image's row.",
    "sample": "Sample name: from the `--samples` CSV, the `--sample-pattern` regex, or `all` by default.",
    "image": "Image id (prediction file name without `_pred.npy`); empty on sample rows.",
    "n_images": "Images in the row: 1 on image rows, the sample's image count on sample rows.",
    "field_pixels": "All pixels of the field(s).",
    "organic_pixels": "Pixels of any maceral (inertinite + vitrinite + liptinite).",
    "organic_field_fraction": "Share of the field covered by organic matter: `organic_pixels / field_pixels`.",
    **_PER_MACERAL_COMPOSITION,
    "points": "Number of points of the equivalent point count (ISO 7404-3: 500), counted on organic matter.",
    **_PER_MACERAL_POINTS,
}
OBJECTS_DOC: dict[str, str] = {
    "sample": "Sample name (as in composition.csv).",
    "class": "Maceral group: inertinite, vitrinite or liptinite.",
    "n_images": "Images in the sample.",
    "object_count": "Connected objects (8-connectivity) of this maceral over the sample's images, "
                    "at least --min-object-pixels large.",
    "objects_per_image": "`object_count / n_images`.",
    "area_mean_px": "Mean object area in pixels.",
    "area_median_px": "Median object area in pixels.",
    "area_p90_px": "90th percentile of object area in pixels.",
    "elongation_mean": "Mean of `1 - minor axis / major axis` over objects (scikit-image regionprops; "
    "0 = round, towards 1 = thin lens); single pixels count as 0.",
    "elongation_median": "Median of the same elongation.",
}


def _expand(template: str) -> list[str]:
    return [template.format(m=name) for name in MACERALS] if "{m}" in template else [template]


# Column order of composition.csv: a group of per-maceral templates is written maceral by
# maceral, so e.g. each organic fraction sits next to its interval.
_COMPOSITION_ORDER: list[tuple[str, ...]] = [
    ("level",),
    ("sample",),
    ("image",),
    ("n_images",),
    ("field_pixels",),
    ("organic_pixels",),
    ("organic_field_fraction",),
    ("{m}_pixels",),
    ("{m}_field_fraction",),
    ("{m}_organic_fraction", "{m}_organic_fraction_ci_low", "{m}_organic_fraction_ci_high"),
    ("points",),
    ("{m}_points_ci_low", "{m}_points_ci_high"),
]


def composition_columns() -> list[str]:
    """composition.csv header, in order (macerals in CLASS_NAMES order)."""
    columns: list[str] = []
    for group in _COMPOSITION_ORDER:
        if "{m}" in group[0]:
            columns.extend(template.format(m=name) for name in MACERALS for template in group)
        else:
            columns.extend(group)
    return columns


def object_columns() -> list[str]:
    """objects.csv header, in order."""
    return list(OBJECTS_DOC)


def columns_markdown() -> str:
    """Markdown tables documenting every column of composition.csv and objects.csv (for the README)."""
    lines = [
        "#### `composition.csv`",
        "",
        "One row per sample (`level` = `sample`, pooled over its images, area-weighted) followed by one row per "
        "image of that sample (`level` = `image`). Fractions are 0..1 with 6 decimals; an empty cell means "
        "undefined (no organic matter, or no bootstrap: a sample of one image, or `--bootstrap 0`).",
        "",
        "| column | meaning |",
        "| --- | --- |",
    ]
    for template, text in COMPOSITION_DOC.items():
        names = ", ".join(f"`{name}`" for name in _expand(template))
        lines.append(f"| {names} | {text.replace('{m}', '<maceral>')} |")
    lines += [
        "",
        "#### `objects.csv`",
        "",
        "One row per sample and maceral group. Objects are the 8-connected regions of each class in the "
        "predicted masks; objects cut by the image border are measured as seen.",
        "",
        "| column | meaning |",
        "| --- | --- |",
    ]
    for name, text in OBJECTS_DOC.items():
        lines.append(f"| `{name}` | {text} |")
    return "\n".join(lines) + "\n"
