import base64
import csv
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_seg.data.io import DataError
from ssl_seg.report import (
    build_report,
    format_summary,
    composition_columns,
    object_columns,
    wilson_interval,
)
from ssl_seg.report.cli import add_arguments, run
from ssl_seg.report.composition import (
    Z_95,
    group_samples,
    measure_image,
    measure_objects,
    summarize_sample,
)

MACERALS = ("inertinite", "vitrinite", "liptinite")
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures


def fixture_masks() -> dict[str, np.ndarray]:
    """Hand-made masks of different sizes, one without organic matter."""
    a = np.zeros((40, 60), np.uint8)
    a[5:15, 5:25] = 1
    a[20:30, 10:12] = 2
    a[30:38, 40:58] = 3
    b = np.zeros((50, 30), np.uint8)
    b[0:50, 0:10] = 2
    b[10:12, 20:22] = 1
    c = np.zeros((20, 20), np.uint8)  # all background
    d = np.full((16, 24), 3, np.uint8)
    d[:4] = 1
    return {"S1_a": a, "S1_b": b, "S2_c": c, "S2_d": d}


def write_predictions(folder: Path, masks: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, mask in masks.items():
        np.save(folder / f"{image_id}_pred.npy", mask)
    return folder


def random_scene(rng: np.random.Generator, shape=(48, 64), proportions=(0.5, 0.3, 0.2)) -> np.ndarray:
    """A mask with blobs whose maceral mix varies from image to image around ``proportions``."""
    mask = np.zeros(shape, np.uint8)
    mix = rng.dirichlet(np.asarray(proportions) * 6)
    for _ in range(12):
        row, col = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        height, width = rng.integers(2, 8, size=2)
        mask[row : row + height, col : col + width] = rng.choice([1, 2, 3], p=mix)
    return mask


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.section_ids: list[str] = []
        self.tables = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "section":
            self.section_ids.append(attrs.get("id", ""))
        elif tag == "table":
            self.tables += 1
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One report over the fixture masks, grouped by id prefix, with images and TensorBoard."""
    root = tmp_path_factory.mktemp("report")
    masks = fixture_masks()
    pred_dir = write_predictions(root / "preds", masks)
    image_dir = root / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    for image_id, mask in masks.items():
        Image.fromarray(rng.integers(60, 200, size=(*mask.shape, 3), dtype=np.uint8)).save(
            image_dir / f"{image_id}.png"
        )
    result = build_report(
        pred_dir,
        root / "out",
        images_dir=image_dir,
        sample_pattern=r"^(S\d)_",
        run_dir=root / "run",
        bootstrap=300,
        thumbnails=3,
    )
    return root, masks, result


# --------------------------------------------------------------------------- fractions


def test_fractions_match_numpy_count(built):
    root, masks, result = built
    header, rows = read_csv(result["paths"]["composition_csv"])
    assert header == composition_columns()
    image_rows = {row["image"]: row for row in rows if row["level"] == "image"}
    assert set(image_rows) == set(masks)
    for image_id, mask in masks.items():
        row = image_rows[image_id]
        organic = int((mask > 0).sum())
        assert int(row["field_pixels"]) == mask.size
        assert int(row["organic_pixels"]) == organic
        assert float(row["organic_field_fraction"]) == pytest.approx(organic / mask.size, abs=1e-6)
        for code, name in enumerate(MACERALS, start=1):
            count = int((mask == code).sum())
            assert int(row[f"{name}_pixels"]) == count
            assert float(row[f"{name}_field_fraction"]) == pytest.approx(count / mask.size, abs=1e-6)
            if organic:
                assert float(row[f"{name}_organic_fraction"]) == pytest.approx(count / organic, abs=1e-6)
            else:
                assert row[f"{name}_organic_fraction"] == ""  # undefined, not 0


@pytest.mark.parametrize("sample,ids", [("S1", ["S1_a", "S1_b"]), ("S2", ["S2_c", "S2_d"])])
def test_sample_rows_pool_pixels(built, sample, ids):
    _, masks, result = built
    row = next(r for r in result["samples"] if r["sample"] == sample)
    pooled = np.concatenate([masks[i].ravel() for i in ids])
    organic = (pooled > 0).sum()
    assert row["n_images"] == len(ids)
    assert row["field_pixels"] == pooled.size
    for code, name in enumerate(MACERALS, start=1):
        assert row[f"{name}_organic_fraction"] == pytest.approx((pooled == code).sum() / organic)
        assert row[f"{name}_field_fraction"] == pytest.approx((pooled == code).sum() / pooled.size)
        low, high = row[f"{name}_organic_fraction_ci_low"], row[f"{name}_organic_fraction_ci_high"]
        assert low <= row[f"{name}_organic_fraction"] + 1e-9 <= high + 2e-9
    assert sum(row[f"{name}_organic_fraction"] for name in MACERALS) == pytest.approx(1.0)


def test_default_sample_is_all_and_single_image_has_no_bootstrap(tmp_path):
    write_predictions(tmp_path / "p", {"only": fixture_masks()["S1_a"]})
    result = build_report(tmp_path / "p", tmp_path / "out", bootstrap=50)
    (row,) = result["samples"]
    assert row["sample"] == "all" and row["n_images"] == 1
    assert math.isnan(row["inertinite_organic_fraction_ci_low"])
    assert not math.isnan(row["inertinite_points_ci_low"])
    _, rows = read_csv(result["paths"]["composition_csv"])
    assert [r["level"] for r in rows] == ["sample", "image"]
    assert rows[0]["inertinite_organic_fraction_ci_low"] == ""


# --------------------------------------------------------------------------- intervals


def test_bootstrap_interval_shrinks_with_more_images(tmp_path):
    rng = np.random.default_rng(1)
    masks = {f"img{index:02d}": random_scene(rng) for index in range(40)}
    write_predictions(tmp_path / "p40", masks)
    write_predictions(tmp_path / "p5", dict(list(masks.items())[:5]))
    few = build_report(tmp_path / "p5", tmp_path / "o5", bootstrap=1000, seed=3)["samples"][0]
    many = build_report(tmp_path / "p40", tmp_path / "o40", bootstrap=1000, seed=3)["samples"][0]
    for name in MACERALS:
        width_few = few[f"{name}_organic_fraction_ci_high"] - few[f"{name}_organic_fraction_ci_low"]
        width_many = many[f"{name}_organic_fraction_ci_high"] - many[f"{name}_organic_fraction_ci_low"]
        assert 0 < width_many < width_few


def test_bootstrap_is_reproducible_with_seed(tmp_path):
    rng = np.random.default_rng(2)
    write_predictions(tmp_path / "p", {f"i{k}": random_scene(rng) for k in range(6)})
    measured = [measure_image(f"i{k}", tmp_path / "p" / f"i{k}_pred.npy") for k in range(6)]
    first = summarize_sample("s", measured, bootstrap=200, points=500, seed=7)
    second = summarize_sample("s", measured, bootstrap=200, points=500, seed=7)
    other = summarize_sample("s", measured, bootstrap=200, points=500, seed=8)
    np.testing.assert_array_equal(first.replicates, second.replicates)
    assert first.row == second.row
    assert not np.array_equal(first.replicates, other.replicates)


def test_wilson_known_values():
    low, high = wilson_interval(0.5, 500)
    assert (round(float(low), 4), round(float(high), 4)) == (0.4563, 0.5437)
    low, high = wilson_interval(0.0, 500)
    assert float(low) == 0.0
    assert float(high) == pytest.approx(Z_95**2 / (500 + Z_95**2))


@pytest.mark.parametrize("fraction", [0.03, 0.2, 0.5, 0.87])
@pytest.mark.parametrize("n", [100, 500])
def test_wilson_bounds_solve_score_equation(fraction, n):
    # Wilson bounds are the p0 where the score statistic |p - p0| / sqrt(p0 (1 - p0) / n) equals z.
    for bound in wilson_interval(fraction, n):
        bound = float(bound)
        assert (fraction - bound) ** 2 == pytest.approx(Z_95**2 * bound * (1 - bound) / n, rel=1e-9)


def test_points_interval_in_csv_matches_wilson(built):
    _, _, result = built
    for row in result["images"] + result["samples"]:
        assert row["points"] == 500
        for name in MACERALS:
            fraction = row[f"{name}_organic_fraction"]
            if math.isnan(fraction):
                assert math.isnan(row[f"{name}_points_ci_low"])
                continue
            low, high = wilson_interval(fraction, 500)
            assert row[f"{name}_points_ci_low"] == pytest.approx(float(low))
            assert row[f"{name}_points_ci_high"] == pytest.approx(float(high))


# --------------------------------------------------------------------------- samples


def test_samples_by_csv(tmp_path):
    masks = fixture_masks()
    write_predictions(tmp_path / "p", masks)
    samples_csv = tmp_path / "samples.csv"
    # Ids, file names and paths are all accepted; rows for unpredicted images are ignored.
    samples_csv.write_text(
        "image,sample\nS1_a.JPG,north\nS1_b,south\nS2_c_pred.npy,north\nsub/S2_d.png,south\nother,east\n"
    )
    result = build_report(tmp_path / "p", tmp_path / "out", samples_csv=samples_csv, bootstrap=50)
    assert [row["sample"] for row in result["samples"]] == ["north", "south"]
    members = {row["image"]: row["sample"] for row in result["images"]}
    assert members == {"S1_a": "north", "S2_c": "north", "S1_b": "south", "S2_d": "south"}


@pytest.mark.parametrize(
    "pattern,expected",
    [
        (r"^(S\d)_", {"S1_a": "S1", "S1_b": "S1", "S2_c": "S2", "S2_d": "S2"}),  # first group
        (r"^[A-Z]\d", {"S1_a": "S1", "S1_b": "S1", "S2_c": "S2", "S2_d": "S2"}),  # whole match
        (r"_(\w)$", {"S1_a": "a", "S1_b": "b", "S2_c": "c", "S2_d": "d"}),
    ],
)
def test_samples_by_pattern(pattern, expected):
    assert group_samples(list(fixture_masks()), sample_pattern=pattern) == expected


def test_report_groups_by_pattern(built):
    _, _, result = built
    assert [(row["sample"], row["n_images"]) for row in result["samples"]] == [("S1", 2), ("S2", 2)]
    assert {row["image"]: row["sample"] for row in result["images"]} == {
        "S1_a": "S1",
        "S1_b": "S1",
        "S2_c": "S2",
        "S2_d": "S2",
    }


def test_default_grouping_is_one_sample_all():
    assert set(group_samples(["x", "y"]).values()) == {"all"}


@pytest.mark.parametrize(
    "csv_text,message",
    [
        ("image,sample\nS1_a,x\n", r"no sample for 3 predicted image\(s\): S1_b, S2_c, S2_d"),
        ("name,group\nS1_a,x\n", "lacks the columns 'image' and 'sample'"),
        ("image,sample\nS1_a,x\nS1_a,y\nS1_b,x\nS2_c,x\nS2_d,x\n", "is in samples 'x' and 'y'"),
        ("image,sample\n\nS1_a,x\n\nS1_a,y\n", r"s\.csv:5: image 'S1_a' is in samples"),  # blank lines counted
        ("image,sample\nS1_a,x\nS1_b," + "y" * 200_000 + "\n", r"s\.csv:3: not a readable CSV line"),
        ("", "lacks the columns 'image' and 'sample'"),
    ],
)
def test_bad_samples_csv_refused(tmp_path, csv_text, message):
    write_predictions(tmp_path / "p", fixture_masks())
    (tmp_path / "s.csv").write_text(csv_text)
    with pytest.raises(DataError, match=message):
        build_report(tmp_path / "p", tmp_path / "out", samples_csv=tmp_path / "s.csv")


@pytest.mark.parametrize(
    "pattern,message", [(r"^(X\d)_", "no sample name in 4 image id"), (r"([", "not a valid regular expression")]
)
def test_bad_sample_pattern_refused(tmp_path, pattern, message):
    write_predictions(tmp_path / "p", fixture_masks())
    with pytest.raises(DataError, match=re.escape(message)):
        build_report(tmp_path / "p", tmp_path / "out", sample_pattern=pattern)


def test_samples_csv_not_utf8_refused(tmp_path):
    write_predictions(tmp_path / "p", fixture_masks())
    (tmp_path / "s.csv").write_bytes("image,sample\nS1_a,Montréal\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"s.csv: not UTF-8 text .*fix: save it as a UTF-8 CSV"):
        build_report(tmp_path / "p", tmp_path / "out", samples_csv=tmp_path / "s.csv")


def test_empty_prediction_refused(tmp_path):
    masks = {**fixture_masks(), "S1_e": np.zeros((0, 5), np.uint8)}
    write_predictions(tmp_path / "p", masks)
    with pytest.raises(DataError, match="S1_e_pred.npy: empty array"):
        build_report(tmp_path / "p", tmp_path / "out")


def test_sample_names_are_shown_verbatim_in_plots(tmp_path):
    # '$' would start matplotlib math text (an invalid one stops the report); a leading '_' hides a legend entry
    masks = fixture_masks()
    write_predictions(tmp_path / "p", {"$\\foo$_1": masks["S1_a"], "_x_2": masks["S1_b"], "y_3": masks["S2_d"]})
    result = build_report(tmp_path / "p", tmp_path / "out", sample_pattern=r"^(.*)_\d$", bootstrap=0)
    assert {row["sample"] for row in result["samples"]} == {"$\\foo$", "_x", "y"}
    assert "intervals: 95% point-count interval (--bootstrap 0)" in format_summary(result)


def test_csv_and_pattern_together_refused(tmp_path):
    write_predictions(tmp_path / "p", fixture_masks())
    (tmp_path / "s.csv").write_text("image,sample\n")
    with pytest.raises(DataError, match="only one"):
        build_report(tmp_path / "p", tmp_path / "out", samples_csv=tmp_path / "s.csv", sample_pattern="x")


# --------------------------------------------------------------------------- objects


def test_object_measurements_match_geometry():
    mask = np.zeros((40, 40), np.uint8)
    mask[2:6, 2:12] = 1  # 4 x 10 rectangle
    mask[20, 20] = 1  # single pixel
    mask[30:35, 30:35] = 1  # 5 x 5 square
    areas, elongations = measure_objects(mask, 1)
    order = np.argsort(areas)
    assert areas[order].tolist() == [1, 25, 40]
    # Ellipse axes of a filled a x b rectangle: 4 * sqrt((side^2 - 1) / 12) (pixel-centre moments).
    minor, major = 4 * math.sqrt((16 - 1) / 12), 4 * math.sqrt((100 - 1) / 12)
    assert elongations[order].tolist() == pytest.approx([0.0, 0.0, 1 - minor / major], abs=1e-6)
    areas, _ = measure_objects(mask, 1, min_pixels=2)
    assert sorted(areas.tolist()) == [25, 40]


def test_objects_csv(built):
    _, masks, result = built
    header, rows = read_csv(result["paths"]["objects_csv"])
    assert header == object_columns()
    assert [(r["sample"], r["class"]) for r in rows] == [(s, m) for s in ("S1", "S2") for m in MACERALS]
    by_key = {(r["sample"], r["class"]): r for r in rows}
    # S1: inertinite = 20x10 block (200 px) in a + 2x2 (4 px) in b.
    inertinite = by_key[("S1", "inertinite")]
    assert int(inertinite["object_count"]) == 2
    assert float(inertinite["area_mean_px"]) == pytest.approx(102.0)
    assert float(inertinite["area_median_px"]) == pytest.approx(102.0)
    assert float(inertinite["objects_per_image"]) == pytest.approx(1.0)
    # S2 has no vitrinite at all: count 0, statistics empty.
    vitrinite = by_key[("S2", "vitrinite")]
    assert (
        int(vitrinite["object_count"]) == 0 and vitrinite["area_mean_px"] == "" and vitrinite["elongation_mean"] == ""
    )


# --------------------------------------------------------------------------- html


def _decoded(src: str) -> bytes:
    header, payload = src.split(",", 1)
    assert header.endswith(";base64")
    return base64.b64decode(payload)


def test_html_parses_and_holds_plots(built):
    root, masks, result = built
    page = parse_page(result["paths"]["report_html"])
    assert page.title == "Maceral composition report"
    assert {"composition", "ternary", "bars", "sizes", "thumbnails", "images"} <= set(page.section_ids)
    assert all(src.startswith("data:image/") for src in page.images)  # self-contained
    plots = [src for src in page.images if src.startswith("data:image/png")]
    thumbs = [src for src in page.images if src.startswith("data:image/jpeg")]
    assert len(plots) == 3 and len(thumbs) == 3
    for src in plots:
        assert _decoded(src).startswith(b"\x89PNG\r\n\x1a\n")
    for src in thumbs:
        data = _decoded(src)
        assert data.startswith(b"\xff\xd8")
    text = result["paths"]["report_html"].read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert page.tables == 3  # samples, objects, per image


def test_thumbnails_are_at_most_320_wide(tmp_path):
    import io

    mask = np.zeros((300, 800), np.uint8)
    mask[100:200, 100:400] = 2
    write_predictions(tmp_path / "p", {"wide": mask})
    (tmp_path / "img").mkdir()
    Image.fromarray(np.full((300, 800, 3), 120, np.uint8)).save(tmp_path / "img" / "wide.jpg")
    result = build_report(tmp_path / "p", tmp_path / "out", images_dir=tmp_path / "img", bootstrap=10)
    page = parse_page(result["paths"]["report_html"])
    (thumb,) = [src for src in page.images if src.startswith("data:image/jpeg")]
    width, height = Image.open(io.BytesIO(_decoded(thumb))).size
    assert (width, height) == (320, 120)


def test_html_without_images_has_no_thumbnail_section(tmp_path):
    write_predictions(tmp_path / "p", fixture_masks())
    result = build_report(tmp_path / "p", tmp_path / "out", bootstrap=20)
    page = parse_page(result["paths"]["report_html"])
    assert "thumbnails" not in page.section_ids
    assert len(page.images) == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["composition.csv", "objects.csv", "report.html"]


def test_sample_names_are_escaped(tmp_path):
    write_predictions(tmp_path / "p", {"a": fixture_masks()["S1_a"]})
    (tmp_path / "s.csv").write_text('image,sample\na,"<b>core & 1</b>"\n')
    result = build_report(tmp_path / "p", tmp_path / "out", samples_csv=tmp_path / "s.csv", bootstrap=10)
    text = result["paths"]["report_html"].read_text()
    assert "<b>core" not in text and "&lt;b&gt;core &amp; 1&lt;/b&gt;" in text


# --------------------------------------------------------------------------- tensorboard


def test_tensorboard_scalars_and_figure(built):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, result = built
    accumulator = EventAccumulator(str(root / "run"))
    accumulator.Reload()
    tags = accumulator.Tags()
    for sample in ("S1", "S2"):
        row = next(r for r in result["samples"] if r["sample"] == sample)
        for name in MACERALS:
            (event,) = accumulator.Scalars(f"report/{sample}/{name}_organic_fraction")
            assert event.value == pytest.approx(row[f"{name}_organic_fraction"], abs=1e-6)
            assert f"report/{sample}/{name}_field_fraction" in tags["scalars"]
    assert "report/ternary" in tags["images"]


def test_sample_names_that_share_a_tensorboard_tag_stay_apart(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    masks = fixture_masks()
    write_predictions(tmp_path / "p", {"x": masks["S1_a"], "y": masks["S2_d"]})
    (tmp_path / "s.csv").write_text("image,sample\nx,core a\ny,core/a\n")  # both would be "core_a"
    result = build_report(tmp_path / "p", tmp_path / "out", samples_csv=tmp_path / "s.csv", run_dir=tmp_path / "run",
                          bootstrap=10, thumbnails=0)
    accumulator = EventAccumulator(str(tmp_path / "run"))
    accumulator.Reload()
    rows = {row["sample"]: row for row in result["samples"]}
    for sample, tag in (("core a", "core_a"), ("core/a", "core_a_2")):
        (event,) = accumulator.Scalars(f"report/{tag}/liptinite_organic_fraction")
        assert event.value == pytest.approx(rows[sample]["liptinite_organic_fraction"], abs=1e-6)


def test_a_training_run_folder_gets_the_summary_in_its_tb(built, tmp_path):
    root, _, _ = built
    (tmp_path / "run" / "tb").mkdir(parents=True)  # as finetune leaves it
    result = build_report(root / "preds", tmp_path / "out", run_dir=tmp_path / "run", bootstrap=10, thumbnails=0)
    assert result["paths"]["run_dir"] == tmp_path / "run" / "tb"
    assert [p.parent.name for p in (tmp_path / "run").rglob("events.out.tfevents.*")] == ["tb"]


# --------------------------------------------------------------------------- bad input


def test_empty_folder_refused(tmp_path):
    (tmp_path / "p").mkdir()
    np.save(tmp_path / "p" / "x_gt.npy", np.zeros((4, 4), np.uint8))  # a label is not a prediction
    with pytest.raises(DataError, match=r"no <id>_pred\.npy files found"):
        build_report(tmp_path / "p", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_folder_refused(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_report(tmp_path / "absent", tmp_path / "out")


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.full((8, 8), 7, np.uint8), "outside the class codes"),
        (np.full((8, 8), 255, np.uint8), "outside the class codes"),
        (np.zeros((8, 8, 3), np.uint8), "2-D"),
        (np.zeros((8, 8), np.float64), "not an integer"),
    ],
)
def test_bad_prediction_refused_with_one_line_naming_file(tmp_path, bad, message):
    write_predictions(tmp_path / "p", {"good": np.zeros((8, 8), np.uint8), "broken": bad})
    with pytest.raises(DataError, match=message) as info:
        build_report(tmp_path / "p", tmp_path / "out")
    assert "broken_pred.npy" in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_images_folder_without_matches_refused(tmp_path):
    write_predictions(tmp_path / "p", {"a": np.zeros((8, 8), np.uint8)})
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / "zzz.png")
    with pytest.raises(DataError, match="matches a prediction id"):
        build_report(tmp_path / "p", tmp_path / "out", images_dir=tmp_path / "img")


def test_image_of_other_size_refused(tmp_path):
    write_predictions(tmp_path / "p", {"a": np.zeros((8, 8), np.uint8)})
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    with pytest.raises(DataError, match=r"a_pred\.npy.*a\.png"):
        build_report(tmp_path / "p", tmp_path / "out", images_dir=tmp_path / "img")


@pytest.mark.parametrize("argument", [{"points": 0}, {"bootstrap": -1}, {"thumbnails": -2}])
def test_bad_parameters_refused(tmp_path, argument):
    write_predictions(tmp_path / "p", {"a": np.zeros((8, 8), np.uint8)})
    with pytest.raises(ValueError, match=next(iter(argument))):
        build_report(tmp_path / "p", tmp_path / "out", **argument)


# --------------------------------------------------------------------------- command line


def test_cli_run(tmp_path, capsys):
    import argparse

    write_predictions(tmp_path / "p", fixture_masks())
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    code = run(
        parser.parse_args(
            [
                "--pred",
                str(tmp_path / "p"),
                "--out",
                str(tmp_path / "o"),
                "--sample-pattern",
                r"^(S\d)",
                "--bootstrap",
                "50",
            ]
        )
    )
    output = capsys.readouterr().out
    assert code == 0 and "S1" in output and "S2" in output and "report.html" in output
    from ssl_seg.cli import main

    code = main(["report", "--pred", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "not found" in error
    (tmp_path / "a_file").write_text("")
    code = main(["report", "--pred", str(tmp_path / "p"), "--out", str(tmp_path / "a_file")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "a_file" in error, error


# --------------------------------------------------------------------------- documentation


def test_csv_columns_documented_in_docs():
    doc = REPO_ROOT / "docs" / "report.md"
    assert doc.is_file(), "docs/report.md is missing: paste the composition/objects column tables into it"
    text = doc.read_text(encoding="utf-8")
    missing = [column for column in composition_columns() + object_columns() if f"`{column}`" not in text]
    assert not missing, f"docs/report.md does not document these report CSV columns: {missing}"


# --------------------------------------------------------------------------- browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    try:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(
            f"headless Chromium unavailable and 'apt-get install -y chromium' failed ({type(error).__name__}): "
            "needs root and Debian's package index"
        )
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed no 'chromium' executable")
    return found


@pytest.mark.slow
def test_page_renders_in_headless_chromium(built, tmp_path):
    chromium = _chromium()
    screenshot = tmp_path / "page.png"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={screenshot}",
        "--window-size=1200,1600",
        built[2]["paths"]["report_html"].resolve().as_uri(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), f"no screenshot; chromium exit {completed.returncode}: {completed.stderr[-2000:]}"
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 20, "screenshot is (almost) blank"
    # The ternary plot sits in the first screen: plenty of non-white, non-black pixels in the middle band.
    middle = pixels[400:1100]
    assert ((middle > 30) & (middle < 225)).mean() > 0.01


# --------------------------------------------------------------------------- real files


def test_report_on_real_coal_masks(real_data, tmp_path):
    """The coal atlas masks stand in for predictions: fractions, thumbnails of the real photos."""
    masks = {
        path.stem: np.array(Image.open(path)) for path in sorted((real_data / "coal_maceral" / "masks").glob("*.png"))
    }
    write_predictions(tmp_path / "p", masks)
    result = build_report(
        tmp_path / "p", tmp_path / "out", images_dir=real_data / "coal_maceral" / "images", bootstrap=200, thumbnails=4
    )
    (sample,) = result["samples"]
    pooled = np.concatenate([mask.ravel() for mask in masks.values()])
    for code, name in enumerate(MACERALS, start=1):
        assert sample[f"{name}_organic_fraction"] == pytest.approx((pooled == code).sum() / (pooled > 0).sum())
    page = parse_page(result["paths"]["report_html"])
    assert len([src for src in page.images if src.startswith("data:image/jpeg")]) == 4


@pytest.mark.parametrize("seed", [0, 1])
def test_object_measurements_match_regionprops(seed):
    from skimage.measure import label, regionprops_table

    mask = random_scene(np.random.default_rng(seed), shape=(120, 160))
    mask[np.random.default_rng(seed).random(mask.shape) < 0.02] = 2  # speckle: many tiny objects
    for code in (1, 2, 3):
        areas, elongations = measure_objects(mask, code)
        table = regionprops_table(
            label(mask == code, connectivity=2), properties=("area", "axis_major_length", "axis_minor_length")
        )
        major, minor = table["axis_major_length"], table["axis_minor_length"]
        expected = np.where(major > 0, 1 - minor / np.where(major > 0, major, 1), 0.0)
        np.testing.assert_array_equal(areas, table["area"].astype(int))
        np.testing.assert_allclose(elongations, expected, atol=1e-6)
