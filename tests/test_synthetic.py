"""Tests for the procedural kerogen scene generator (ssl_seg.data.synthetic)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from ssl_seg import NUM_CLASSES
from ssl_seg.data.synthetic import MODES, dataset_magnification, render_scene, write_dataset

SMALL = (96, 120)


def _scene(seed: int, mode: str | None = None, size: tuple[int, int] = SMALL):
    return render_scene(np.random.default_rng(seed), *size, mode=mode)


@pytest.mark.parametrize("mode", [*MODES, None])
@pytest.mark.parametrize("size", [(64, 64), (96, 120), (130, 77)])
def test_scene_shapes_dtypes_and_values(mode, size):
    image, mask = _scene(3, mode, size)
    assert image.shape == (*size, 3) and image.dtype == np.uint8
    assert mask.shape == size and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= set(range(NUM_CLASSES))
    assert image.std() > 1.0, "a scene should not be a flat picture"


def test_same_seed_gives_identical_scene():
    first, second = _scene(11), _scene(11)
    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])


def test_different_seeds_give_different_scenes():
    (image_a, mask_a), (image_b, mask_b) = _scene(1, "white"), _scene(2, "white")
    assert not np.array_equal(image_a, image_b)
    assert not np.array_equal(mask_a, mask_b)


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_shows_all_classes(mode):
    seen = set()
    for seed in range(8):
        seen |= set(np.unique(_scene(seed, mode, (128, 160))[1]).tolist())
    assert seen == set(range(NUM_CLASSES))


def test_modes_look_different():
    # Fluorescence is a dark field; white light is a mid-grey one.
    white = np.mean([_scene(seed, "white")[0].mean() for seed in range(6)])
    fluorescence = np.mean([_scene(seed, "fluorescence")[0].mean() for seed in range(6)])
    assert fluorescence < white


def test_class_frequencies_are_skewed():
    counts = np.zeros(NUM_CLASSES)
    for seed in range(20):
        counts += np.bincount(_scene(100 + seed, None, (128, 160))[1].ravel(), minlength=NUM_CLASSES)
    fractions = counts / counts.sum()
    assert 0.75 < fractions[0] < 0.95, fractions
    assert fractions[2] > fractions[3], fractions  # vitrinite outweighs liptinite by area
    assert fractions[2] == max(fractions[1:]), fractions


def test_unknown_mode_and_bad_size_are_refused():
    with pytest.raises(ValueError, match="mode"):
        _scene(0, "infrared")
    with pytest.raises(ValueError, match="size"):
        _scene(0, "white", (8, 8))


def _files(folder, pattern):
    return sorted(path.name for path in folder.glob(pattern))


def test_write_dataset_layout(tmp_path):
    summary = write_dataset(tmp_path, labeled=3, unlabeled=4, test=2, size=SMALL, seed=5, progress=False)
    labeled = _files(tmp_path / "train" / "labeled", "*")
    labels = _files(tmp_path / "train" / "labels", "*")
    unlabeled = _files(tmp_path / "train" / "unlabeled", "*")
    test = _files(tmp_path / "test", "*")
    answers = _files(tmp_path / "test_answers", "*")
    assert (len(labeled), len(labels), len(unlabeled), len(test), len(answers)) == (3, 3, 4, 2, 2)
    ids = [name[:-4] for name in labeled + unlabeled + test]
    assert all(re.fullmatch(r"[a-z0-9]{6}", scene_id) for scene_id in ids)
    assert len(set(ids)) == len(ids)
    assert all(name.endswith(".JPG") for name in labeled + unlabeled + test)
    assert labels == [f"{name[:-4]}_gt.npy" for name in labeled]
    assert answers == [f"{name[:-4]}_gt.npy" for name in test]
    assert not list((tmp_path / "test").glob("*.npy")), "test answers belong in test_answers/"
    for image_dir, mask_dir, names in [("train/labeled", "train/labels", labeled), ("test", "test_answers", test)]:
        for name in names:
            with Image.open(tmp_path / image_dir / name) as picture:
                assert picture.format == "JPEG" and picture.mode == "RGB"
                assert (picture.height, picture.width) == SMALL
            mask = np.load(tmp_path / mask_dir / f"{name[:-4]}_gt.npy")
            assert mask.shape == SMALL and mask.dtype == np.uint8
    assert summary["counts"] == {"labeled": 3, "unlabeled": 4, "test": 2}
    assert summary["written"] == 9 and summary["skipped"] == 0
    assert sum(summary["modes"].values()) == 9
    assert sorted(summary["scene_modes"]) == sorted(ids)
    assert {mode: list(summary["scene_modes"].values()).count(mode) for mode in summary["modes"]} == summary["modes"]
    assert sum(summary["class_fractions"].values()) == pytest.approx(1.0)
    assert not [path for path in tmp_path.rglob(".*")], "temporary files must be renamed into place"


def test_write_dataset_is_deterministic_and_resumes(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    arguments = dict(labeled=2, unlabeled=2, test=1, size=SMALL, seed=9, progress=False)
    summary = write_dataset(first, **arguments)
    snapshot = {path.relative_to(first): path.read_bytes() for path in first.rglob("*") if path.is_file()}
    # A fresh folder gets byte-identical files.
    write_dataset(second, **arguments)
    assert {path.relative_to(second): path.read_bytes() for path in second.rglob("*") if path.is_file()} == snapshot
    # Rerunning over the first folder skips everything and changes nothing.
    mtimes = {path: path.stat().st_mtime_ns for path in first.rglob("*") if path.is_file()}
    again = write_dataset(first, **arguments)
    assert again["written"] == 0 and again["skipped"] == 5
    assert again["class_fractions"] == summary["class_fractions"] and again["modes"] == summary["modes"]
    assert {path: path.stat().st_mtime_ns for path in first.rglob("*") if path.is_file()} == mtimes
    # A lost file is written again, identical to before.
    lost = next(path for path in sorted(snapshot) if path.suffix == ".JPG")
    (first / lost).unlink()
    resumed = write_dataset(first, **arguments)
    assert resumed["written"] == 1 and (first / lost).read_bytes() == snapshot[lost]


def test_growing_a_split_keeps_earlier_files(tmp_path):
    write_dataset(tmp_path, labeled=2, unlabeled=0, test=0, size=SMALL, seed=4, progress=False)
    before = _files(tmp_path / "train" / "labeled", "*.JPG")
    summary = write_dataset(tmp_path, labeled=3, unlabeled=0, test=0, size=SMALL, seed=4, progress=False)
    assert set(before) < set(_files(tmp_path / "train" / "labeled", "*.JPG"))
    assert summary["written"] == 1


def test_rerun_with_another_size_is_refused(tmp_path):
    write_dataset(tmp_path, labeled=1, unlabeled=0, test=0, size=SMALL, seed=0, progress=False)
    with pytest.raises(ValueError, match="new folder"):
        write_dataset(tmp_path, labeled=1, unlabeled=0, test=0, size=(64, 64), seed=0, progress=False)


@pytest.mark.parametrize("bad", [{"labeled": -1}, {"test": 1.5}, {"seed": -3}, {"size": (10, 10)}])
def test_write_dataset_refuses_bad_arguments(tmp_path, bad):
    arguments = dict(labeled=1, unlabeled=0, test=0, size=SMALL, seed=0, progress=False) | bad
    with pytest.raises(ValueError):
        write_dataset(tmp_path, **arguments)


def test_unlabeled_truth_is_the_scene_the_image_was_drawn_from(tmp_path):
    from ssl_seg.data.layout import discover

    write_dataset(tmp_path, labeled=1, unlabeled=3, test=1, size=(64, 80), seed=5, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "train" / "unlabeled").iterdir()}
    write_dataset(tmp_path, labeled=1, unlabeled=3, test=1, size=(64, 80), seed=5, progress=False,
                  unlabeled_truth=True)
    truths = sorted((tmp_path / "train" / "unlabeled_truth").glob("*_gt.npy"))
    assert [p.name.replace("_gt.npy", ".JPG") for p in truths] == sorted(before)
    # Re-rendering for the truth leaves the images as they were.
    assert {p.name: p.read_bytes() for p in (tmp_path / "train" / "unlabeled").iterdir()} == before
    for path in truths:
        mask = np.load(path)
        assert mask.shape == (64, 80) and mask.dtype == np.uint8 and mask.max() <= 3
    index = discover(tmp_path)  # training never sees the hidden truth
    assert len(index.labeled) == 1 and len(index.unlabeled) == 3


def test_magnification_draws_fewer_larger_bodies():
    from skimage.measure import label

    def body_sizes(magnification):
        areas = []
        for seed in range(6):
            _, mask = render_scene(np.random.default_rng(seed), 128, 160, "white", magnification)
            components = label(mask > 0)
            areas += np.bincount(components.ravel())[1:].tolist()
        return len(areas), np.mean(areas)

    count_1, mean_area_1 = body_sizes(1.0)
    count_3, mean_area_3 = body_sizes(3.0)
    assert count_3 < count_1 and mean_area_3 > 2 * mean_area_1


def test_rerun_with_another_magnification_is_refused(tmp_path):
    arguments = dict(labeled=1, unlabeled=0, test=0, size=SMALL, seed=0, progress=False)
    assert dataset_magnification(tmp_path) is None
    write_dataset(tmp_path, **arguments, magnification=2.0)
    assert dataset_magnification(tmp_path) == 2.0
    assert json.loads((tmp_path / "synth.json").read_text()) == {"magnification": 2.0, "labeled_modes": "random"}
    assert write_dataset(tmp_path, **arguments, magnification=2.0)["skipped"] == 1
    with pytest.raises(ValueError, match=r"magnification 2.0, not 1.0.*new folder"):
        write_dataset(tmp_path, **arguments)
    with pytest.raises(ValueError, match="positive"):
        render_scene(np.random.default_rng(0), *SMALL, magnification=0.0)


@pytest.mark.parametrize("second", [{"seed": 5}, {"labeled": 1}])
def test_a_folder_holding_scenes_of_another_seed_or_count_is_refused(tmp_path, second):
    write_dataset(tmp_path, labeled=2, unlabeled=0, test=1, size=SMALL, seed=0, progress=False)
    before = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(ValueError, match="another --seed or larger counts"):
        write_dataset(tmp_path, **{**dict(labeled=2, unlabeled=0, test=1, size=SMALL, seed=0, progress=False),
                                   **second})
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == before


def test_alternate_labeled_modes_light_both_modes_in_turn_and_are_recorded(tmp_path):
    arguments = dict(labeled=4, unlabeled=3, test=2, size=SMALL, seed=3, progress=False)
    summary = write_dataset(tmp_path / "alternate", **arguments, labeled_modes="alternate")
    by_chance = write_dataset(tmp_path / "random", **arguments)
    labeled_ids = sorted(p.stem for p in (tmp_path / "alternate" / "train" / "labeled").glob("*.JPG"))
    assert sorted(p.stem for p in (tmp_path / "random" / "train" / "labeled").glob("*.JPG")) == labeled_ids
    # seed 3 of the benchmark draws its first 4 labeled scenes all white (experiments/RESULTS.md)
    assert [by_chance["scene_modes"][i] for i in labeled_ids].count("fluorescence") == 0
    assert sorted(summary["scene_modes"][i] for i in labeled_ids) == ["fluorescence"] * 2 + ["white"] * 2
    others = [i for i in summary["scene_modes"] if i not in labeled_ids]  # unlabeled and test: drawn as before
    assert [summary["scene_modes"][i] for i in others] == [by_chance["scene_modes"][i] for i in others]
    assert json.loads((tmp_path / "alternate" / "synth.json").read_text())["labeled_modes"] == "alternate"
    with pytest.raises(ValueError, match=r"labeled modes alternate, not random.*new folder"):
        write_dataset(tmp_path / "alternate", **arguments)
    with pytest.raises(ValueError, match=r"labeled_modes must be one of random, alternate"):
        write_dataset(tmp_path / "new", **arguments, labeled_modes="balanced")


def test_a_record_without_labeled_modes_reads_as_random(tmp_path):
    arguments = dict(labeled=1, unlabeled=0, test=0, size=SMALL, seed=0, progress=False)
    write_dataset(tmp_path, **arguments, magnification=2.0)
    (tmp_path / "synth.json").write_text(json.dumps({"magnification": 2.0}))  # as written before 0.4.1
    assert write_dataset(tmp_path, **arguments, magnification=2.0)["skipped"] == 1
    with pytest.raises(ValueError, match=r"labeled modes random, not alternate"):
        write_dataset(tmp_path, **arguments, magnification=2.0, labeled_modes="alternate")
