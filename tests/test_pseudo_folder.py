"""One pseudo-label folder: shards merge into one manifest, one setting per folder, bad settings refused."""

import json
import threading

import pytest

from ssl_seg.config import load_config
from ssl_seg.data.synthetic import write_dataset
from ssl_seg.pseudo.run import merge_lock, merge_manifest, pseudo_label
from ssl_seg.train.trainer import train

FAST = {"tile_size": 64, "workers": 0, "progress": False, "refine": "none", "threshold": 0.0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pl")
    write_dataset(root / "data", labeled=2, unlabeled=5, test=0, size=(64, 80), seed=5, progress=False)
    train(load_config(None, {"steps": 1, "batch_size": 2, "tile_size": 64, "num_workers": 0, "val_every": 1}),
          root / "data", root / "teacher", progress=False)
    return root / "teacher", root / "data" / "train" / "unlabeled"


def test_shards_merge_into_one_manifest_without_temporaries(setup, tmp_path):
    teacher, images = setup
    pseudo_label(teacher, images, tmp_path / "pl", shard=(1, 2), **FAST)
    # a shard killed while writing an entry leaves a hidden temporary: never part of the manifest
    (tmp_path / "pl" / "entries" / ".zzz.tmp-0000abcd.json").write_text('{"pixels": ')
    stats = pseudo_label(teacher, images, tmp_path / "pl", shard=(0, 2), **FAST)
    assert stats["done"] == 3 and stats["images"] == 5
    manifest = json.loads((tmp_path / "pl" / "manifest.json").read_text())
    assert sorted(manifest["images"]) == sorted(p.stem for p in images.iterdir())
    assert all(entry["threshold"] == 0.0 and entry["tta"] == 1 for entry in manifest["images"].values())


def test_merges_wait_for_each_other(setup, tmp_path):
    teacher, images = setup
    pseudo_label(teacher, images, tmp_path / "pl", **FAST)
    (tmp_path / "pl" / "manifest.json").unlink()
    with merge_lock(tmp_path / "pl"):  # another shard is merging
        merging = threading.Thread(target=merge_manifest, args=(tmp_path / "pl", {}))
        merging.start()
        merging.join(timeout=0.5)
        assert merging.is_alive() and not (tmp_path / "pl" / "manifest.json").exists()
    merging.join(timeout=30)
    assert len(json.loads((tmp_path / "pl" / "manifest.json").read_text())["images"]) == 5


def test_rerun_with_other_settings_is_refused(setup, tmp_path):
    teacher, images = setup
    pseudo_label(teacher, images, tmp_path / "pl", **FAST)
    with pytest.raises(ValueError, match=r"other settings \(threshold 0.0 -> 0.9\)"):
        pseudo_label(teacher, images, tmp_path / "pl", **{**FAST, "threshold": 0.9})
    with pytest.raises(ValueError, match="refiner none -> superpixel"):
        pseudo_label(teacher, images, tmp_path / "pl", **{**FAST, "refine": "superpixel"})
    assert pseudo_label(teacher, images, tmp_path / "pl", **FAST)["skipped"] == 5  # the same settings resume


@pytest.mark.parametrize("bad, match", [({"refine": "superpixels"}, "refine must be"),
                                        ({"threshold": 1.5}, "--threshold must lie in"),
                                        ({"class_balance": -0.1}, "--class-balance must lie in"),
                                        ({"tta": 4}, "--tta must be"),
                                        ({"superpixel_method": "quickshift"}, "superpixel method must be")])
def test_bad_settings_are_refused_before_any_work(setup, tmp_path, bad, match):
    teacher, images = setup
    with pytest.raises(ValueError, match=match):
        pseudo_label(teacher, images, tmp_path / "pl", **{**FAST, **bad})
    assert not (tmp_path / "pl").exists()


def test_felzenszwalb_superpixels(setup, tmp_path):
    teacher, images = setup
    stats = pseudo_label(teacher, images, tmp_path / "pl",
                         **{**FAST, "refine": "superpixel", "superpixel_method": "felzenszwalb"})
    manifest = json.loads((tmp_path / "pl" / "manifest.json").read_text())
    assert stats["done"] == 5 and manifest["refiner"] == "superpixel-felzenszwalb"
