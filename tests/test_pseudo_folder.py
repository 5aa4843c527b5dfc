"""One pseudo-label folder: shards merge into one manifest, one setting per folder, bad settings refused."""

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from ssl_seg.config import load_config
from ssl_seg.data.io import DataError, read_image, save_jpg
from ssl_seg.data.synthetic import write_dataset
from ssl_seg.data.pseudo_labels import merge_lock, merge_manifest
from ssl_seg.pseudo.run import pseudo_label
from ssl_seg.errors import TrainError
from ssl_seg.train.loop import train

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
    with pytest.raises(ValueError, match="tile_size 64 -> 48"):  # tiles change the blended probabilities
        pseudo_label(teacher, images, tmp_path / "pl", **{**FAST, "tile_size": 48})
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


def test_masks_and_confidence_are_the_teachers(setup, tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from ssl_seg.data.io import read_image
    from ssl_seg.inference import predict_image
    from ssl_seg.train.checkpoint import load_model

    teacher, images = setup
    model, _ = load_model(teacher)
    predicted = {path.stem: predict_image(model, read_image(path), torch.device("cpu"), tile_size=64)
                 for path in sorted(images.iterdir())}
    # a 1-step teacher is nearly uniform: a threshold at its median confidence keeps half the pixels
    threshold = float(np.median(np.concatenate([c.ravel() for _, c in predicted.values()])))
    pseudo_label(teacher, images, tmp_path / "pl", **{**FAST, "threshold": threshold})
    classes = set()
    for stem, (labels, confidence) in predicted.items():
        classes |= set(np.unique(labels[confidence >= threshold]).tolist())
        mask = np.asarray(Image.open(tmp_path / "pl" / "masks" / f"{stem}.png"))
        np.testing.assert_array_equal(mask, np.where(confidence >= threshold, labels, 255))
        saved = np.asarray(Image.open(tmp_path / "pl" / "confidence" / f"{stem}.png")).astype(int)
        assert np.abs(saved - np.round(confidence * 255)).max() <= 1
    assert len(classes) > 1, "precondition: the teacher labels more than one class"


def test_entry_is_written_after_mask_and_confidence(setup, tmp_path, monkeypatch):
    import ssl_seg.data.pseudo_labels as folder

    teacher, images = setup
    real_save_png, calls = folder.save_png, []

    def save_png_then_fail(path, array, **options):  # the 3rd PNG (the 2nd image's mask) fails, as a kill would
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_save_png(path, array, **options)

    monkeypatch.setattr(folder, "save_png", save_png_then_fail)
    with pytest.raises(OSError, match="disk full"):
        pseudo_label(teacher, images, tmp_path / "pl", **FAST)
    entries = list((tmp_path / "pl" / "entries").glob("[!.]*.json"))
    failed = Path(calls[2]).stem
    assert entries and failed not in {entry.stem for entry in entries}  # the image whose mask failed is not done
    for entry in entries:
        assert (tmp_path / "pl" / "masks" / f"{entry.stem}.png").is_file()
        assert (tmp_path / "pl" / "confidence" / f"{entry.stem}.png").is_file()


def test_a_run_that_finished_no_image_does_not_fix_the_settings(setup, tmp_path):
    import shutil

    teacher, images = setup
    shutil.copytree(images, tmp_path / "images")
    broken = sorted((tmp_path / "images").iterdir())[0]
    saved = broken.read_bytes()
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=broken.name):
        pseudo_label(teacher, tmp_path / "images", tmp_path / "pl", **{**FAST, "threshold": 0.9})
    broken.write_bytes(saved)
    assert pseudo_label(teacher, tmp_path / "images", tmp_path / "pl", **FAST)["done"] == 5


def test_an_image_whose_mask_went_missing_is_labelled_again(setup, tmp_path):
    teacher, images = setup
    pseudo_label(teacher, images, tmp_path / "pl", **FAST)
    lost = sorted((tmp_path / "pl" / "masks").iterdir())[0]
    lost.unlink()
    stats = pseudo_label(teacher, images, tmp_path / "pl", **FAST)
    assert (stats["done"], stats["skipped"]) == (1, 4) and lost.is_file()


def test_another_image_under_a_finished_id_is_refused_not_skipped(setup, tmp_path):
    teacher, images = setup
    other = tmp_path / "other"
    other.mkdir()
    first = sorted(images.iterdir())[0]
    shutil.copy(sorted(images.iterdir())[1], other / first.name)  # another picture under the same file name
    pseudo_label(teacher, images, tmp_path / "pl", **FAST)
    with pytest.raises(DataError, match=rf"pseudo-label of .*{first.name} under id '{first.stem}'.*another --out"):
        pseudo_label(teacher, other, tmp_path / "pl", **FAST)
    shutil.copy(first, other / first.name)  # a copy of the same picture resumes
    assert pseudo_label(teacher, other, tmp_path / "pl", **FAST)["skipped"] == 1
    moved = tmp_path / "moved"  # the folder moved without its images: nothing to compare, it resumes
    shutil.copytree(tmp_path / "pl", moved)
    (moved / "entries" / f"{first.stem}.json").write_text(json.dumps(
        {**json.loads((moved / "entries" / f"{first.stem}.json").read_text()), "image": f"../gone/{first.name}"}))
    assert pseudo_label(teacher, images, moved, **FAST)["skipped"] == 5


def test_shards_of_another_teacher_are_refused(setup, tmp_path):
    teacher, images = setup
    train(load_config(None, {"steps": 1, "batch_size": 2, "tile_size": 64, "num_workers": 0, "val_every": 1,
                             "seed": 1}), images.parent.parent, tmp_path / "other_teacher", progress=False)
    pseudo_label(teacher, images, tmp_path / "pl", shard=(0, 2), **FAST)
    with pytest.raises(ValueError, match="other settings \\(teacher_sha256 "):
        pseudo_label(tmp_path / "other_teacher", images, tmp_path / "pl", shard=(1, 2), **FAST)


def test_shards_started_at_once_with_other_options_are_caught_at_the_merge(setup, tmp_path, monkeypatch):
    from ssl_seg.pseudo import run

    teacher, images = setup
    pseudo_label(teacher, images, tmp_path / "pl", shard=(0, 2), **FAST)
    # shard 1 compared the settings before shard 0 had finished an image, so its check found nothing to compare
    monkeypatch.setattr(run, "check_same_settings", lambda out, settings: None)
    with pytest.raises(ValueError, match=r"mixes pseudo-labels of different settings \(threshold 0.0 and 0.5\).*"
                                         r"delete the folder"):
        pseudo_label(teacher, images, tmp_path / "pl", shard=(1, 2), **{**FAST, "threshold": 0.5})
    assert json.loads((tmp_path / "pl" / "manifest.json").read_text())["summary"]["images"] == 3  # not overwritten


def test_entries_without_a_teacher_digest_still_merge(setup, tmp_path):
    teacher, images = setup
    pseudo_label(teacher, images, tmp_path / "pl", shard=(0, 2), **FAST)
    for entry in (tmp_path / "pl" / "entries").glob("*.json"):  # as ssl_seg 0.1.4 wrote them
        old = {k: v for k, v in json.loads(entry.read_text()).items() if k not in ("teacher_sha256", "dinov2")}
        entry.write_text(json.dumps(old))
    assert pseudo_label(teacher, images, tmp_path / "pl", shard=(1, 2), **FAST)["images"] == 5


def test_the_dinov2_pipeline_runs_and_keeps_its_folder_apart(setup, tmp_path):
    from transformers import Dinov2Model

    from ssl_seg.models.dinov2 import tiny_dinov2_config

    teacher, images = setup
    Dinov2Model(tiny_dinov2_config()).save_pretrained(tmp_path / "dino")
    pseudo_label(teacher, images, tmp_path / "pl", shard=(0, 2), dinov2=str(tmp_path / "dino"),
                 labeled=str(images.parent.parent), local_files_only=True, **FAST)
    entries = [json.loads(path.read_text()) for path in (tmp_path / "pl" / "entries").glob("*.json")]
    assert len(entries) == 3
    assert all(e["dinov2"] == "dino" and e["teacher"].endswith(" + dinov2:" + str(tmp_path / "dino")) for e in entries)
    with pytest.raises(ValueError, match=r"other settings \(dinov2 dino -> None; dinov2_labeled [0-9a-f]+ -> None\)"):
        pseudo_label(teacher, images, tmp_path / "pl", shard=(1, 2), **FAST)
    # other labeled masks give other class prototypes: the same weights, another feature teacher
    other = tmp_path / "other_labeled"
    shutil.copytree(images.parent.parent, other)
    mask_path = next((other / "train" / "labels").glob("*_gt.npy"))
    mask = np.load(mask_path)
    mask[0, 0] = (mask[0, 0] + 1) % 4
    np.save(mask_path, mask)
    with pytest.raises(ValueError, match=r"other settings \(dinov2_labeled [0-9a-f]+ -> [0-9a-f]+\)"):
        pseudo_label(teacher, images, tmp_path / "pl", shard=(1, 2), dinov2=str(tmp_path / "dino"),
                     labeled=str(other), local_files_only=True, **FAST)
    moved = shutil.copytree(images.parent.parent, tmp_path / "moved")  # the same masks elsewhere: they resume
    assert pseudo_label(teacher, images, tmp_path / "pl", shard=(1, 2), dinov2=str(tmp_path / "dino"),
                        labeled=str(moved), local_files_only=True, **FAST)["images"] == 5


def test_without_weights_it_falls_back_and_says_so(setup, tmp_path, capsys):
    teacher, images = setup
    stats = pseudo_label(teacher, images, tmp_path / "pl", **{**FAST, "refine": "sam"}, sam=None)
    assert "falling back to superpixel refinement" in capsys.readouterr().err
    assert json.loads((tmp_path / "pl" / "manifest.json").read_text())["refiner"] == "superpixel" and stats["done"] == 5
    pseudo_label(teacher, images, tmp_path / "pl2", **{**FAST, "refine": "sam"}, sam=str(tmp_path / "no_sam"),
                 dinov2=str(tmp_path / "no_dinov2"), labeled=str(images.parent.parent), local_files_only=True)
    said = capsys.readouterr().err
    assert "no_sam" in said and "falling back to superpixel refinement" in said
    assert "no_dinov2" in said and "continuing with the model teacher alone" in said
    manifest = json.loads((tmp_path / "pl2" / "manifest.json").read_text())
    assert manifest["refiner"] == "superpixel" and manifest["dinov2"] is None and "dinov2" not in manifest["teacher"]


def test_pretrain_refuses_a_folder_with_unfinished_shards(setup, tmp_path):
    teacher, images = setup
    pseudo_label(teacher, images, tmp_path / "pl", shard=(0, 2), **FAST)
    cfg = load_config(None, {"steps": 1, "batch_size": 2, "tile_size": 64, "num_workers": 0, "labeled_ratio": 0.5,
                             "pseudo_labels": str(tmp_path / "pl")})
    with pytest.raises(TrainError, match="lists 3 of 5 images"):
        train(cfg, images.parent.parent, tmp_path / "student", mode="pretrain", progress=False)
    pseudo_label(teacher, images, tmp_path / "pl", shard=(1, 2), **FAST)
    train(cfg, images.parent.parent, tmp_path / "student", mode="pretrain", progress=False)


def test_a_corrupt_mask_names_the_fix_that_redoes_it(setup, tmp_path):
    from ssl_seg.data.io import read_mask

    teacher, images = setup
    pseudo_label(teacher, images, tmp_path / "pl", **FAST)
    broken = sorted((tmp_path / "pl" / "masks").iterdir())[0]
    broken.write_bytes(b"not a png")  # a disk error, a copy cut short
    with pytest.raises(DataError, match="delete it and rerun the same ssl-seg pseudo-label command"):
        read_mask(broken, pseudo=True)
    broken.unlink()  # the fix, as the error gives it
    assert pseudo_label(teacher, images, tmp_path / "pl", **FAST)["done"] == 1
    assert read_mask(broken, pseudo=True).shape == (64, 80)


@pytest.mark.parametrize("at_once, batch", [(3, 1), (3, 3), (6, 2)])
def test_images_labelled_at_once_or_in_batches_give_the_same_files(setup, tmp_path, at_once, batch):
    """Batched or not, the teacher's probabilities agree to float rounding; the files are the same bytes."""
    teacher, images = setup
    for name, options in (("one", {}), ("many", {"images_at_once": at_once, "batch_images": batch})):
        pseudo_label(teacher, images, tmp_path / name, **{**FAST, "refine": "superpixel", **options})
    for sub in ("masks", "confidence", "entries"):
        one, many = (sorted((tmp_path / name / sub).iterdir()) for name in ("one", "many"))
        assert [p.name for p in one] == [p.name for p in many] and len(one) == 5
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, many))


def test_a_batch_holds_images_of_one_size(setup, tmp_path):
    teacher, images = setup
    folder = tmp_path / "images"
    folder.mkdir()
    for k, path in enumerate(sorted(images.iterdir())):  # sizes alternate: every batch is cut at each change
        image = read_image(path)
        save_jpg(folder / path.name, image if k % 2 else image[:48, :72])
    for name, batch in (("one", 1), ("many", 4)):
        pseudo_label(teacher, folder, tmp_path / name, batch_images=batch, **FAST)
    one, many = (sorted((tmp_path / name / "masks").iterdir()) for name in ("one", "many"))
    assert len(one) == 5 and all(a.read_bytes() == b.read_bytes() for a, b in zip(one, many))


@pytest.mark.parametrize("at_once, batch", [(1, 1), (3, 1), (4, 2)])
def test_an_unreadable_image_stops_the_run_after_the_images_before_it(setup, tmp_path, at_once, batch):
    teacher, images = setup
    folder = tmp_path / "images"
    folder.mkdir()
    paths = sorted(images.iterdir())
    for path in paths:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / f"{paths[2].stem}b.jpg").write_bytes(b"not a jpeg")  # sorts third of six
    with pytest.raises(DataError, match="b.jpg"):
        pseudo_label(teacher, folder, tmp_path / "pl", images_at_once=at_once, batch_images=batch, **FAST)
    assert sorted(p.stem for p in (tmp_path / "pl" / "entries").glob("*.json")) == [p.stem for p in paths[:3]]


def test_cli_images_at_once_and_batch_images(setup, tmp_path, capsys):
    from ssl_seg.cli import main

    teacher, images = setup
    command = ["pseudo-label", "--checkpoint", str(teacher), "--images", str(images), "--out", str(tmp_path / "pl"),
               "--tile-size", "64", "--threshold", "0", "--no-progress"]
    assert main(command + ["--images-at-once", "0"]) == 2
    assert "--images-at-once must be at least 1, got 0" in capsys.readouterr().err
    assert main(command + ["--batch-images", "0"]) == 2
    assert "--batch-images must be at least 1, got 0" in capsys.readouterr().err
    assert main(command + ["--images-at-once", "1", "--batch-images", "2"]) == 2
    assert "--images-at-once 1 is below --batch-images 2" in capsys.readouterr().err
    assert main(command + ["--images-at-once", "2", "--batch-images", "2"]) == 0
    assert len(list((tmp_path / "pl" / "entries").glob("*.json"))) == 5


def test_few_confident_pixels_warn_and_none_is_refused_by_pretrain(setup, tmp_path, capsys):
    teacher, images = setup
    pseudo_label(teacher, images, tmp_path / "kept", **FAST)
    assert "kept a label" not in capsys.readouterr().err
    pseudo_label(teacher, images, tmp_path / "none", shard=(0, 2), **{**FAST, "threshold": 1.0})  # a 1-step teacher
    assert "kept a label" not in capsys.readouterr().err  # the folder is not finished yet
    stats = pseudo_label(teacher, images, tmp_path / "none", shard=(1, 2), **{**FAST, "threshold": 1.0})
    assert stats["images"] == 5 and stats["confident_fraction"] == 0
    warning = capsys.readouterr().err
    assert "only 0.00% of the pixels" in warning and "lower --threshold, or" in warning
    cfg = load_config(None, {"steps": 1, "batch_size": 2, "tile_size": 64, "num_workers": 0,
                             "pseudo_labels": str(tmp_path / "none")})
    with pytest.raises(TrainError, match=r"no pixel kept a label \(confidence threshold 1.0\)"):
        train(cfg, images.parent.parent, tmp_path / "student", mode="pretrain", progress=False)


def test_a_dataset_without_unlabeled_images_says_where_they_go(tmp_path):
    from ssl_seg.pseudo.run import unlabeled_images

    write_dataset(tmp_path / "ss2", labeled=2, unlabeled=0, test=0, size=(64, 64), seed=0, progress=False)
    with pytest.raises(DataError, match=r"no unlabeled images found \(layout ss2 at .*: 2 labeled, 0 unlabeled, "
                                        r"0 test\); point --images at a folder of images, or add them to its "
                                        r"train/unlabeled/$"):
        unlabeled_images(tmp_path / "ss2")


def test_a_second_run_on_a_folder_in_use_is_refused_at_once(setup, tmp_path):
    pytest.importorskip("fcntl")
    from ssl_seg.data.lock import LOCK_NAME, folder_lock

    teacher, images = setup
    with folder_lock(tmp_path / "pl"):  # another run holds the folder
        with pytest.raises(DataError, match=r"pl is in use by another pseudo-label run \(pid \d+ on .+\); wait"):
            pseudo_label(teacher, images, tmp_path / "pl", **FAST)
        with pytest.raises(DataError, match="in use"):  # a shard may not join a lone run
            pseudo_label(teacher, images, tmp_path / "pl", shard=(0, 2), **FAST)
        assert not (tmp_path / "pl" / "entries").exists()  # refused before any image was labelled
    # the holder ended; what it left in the lock file is stale and does not stop the next run
    (tmp_path / "pl" / LOCK_NAME).write_text("pid 999999 on a machine that crashed")
    assert pseudo_label(teacher, images, tmp_path / "pl", **FAST)["done"] == 5


def test_shards_share_a_folder_but_not_a_shard(setup, tmp_path):
    pytest.importorskip("fcntl")
    from ssl_seg.data.lock import folder_lock

    teacher, images = setup
    with folder_lock(tmp_path / "pl", shard=(0, 2)):
        assert pseudo_label(teacher, images, tmp_path / "pl", shard=(1, 2), **FAST)["done"] == 2
        with pytest.raises(DataError, match=r"in use by another pseudo-label run \(shard 0/2"):
            pseudo_label(teacher, images, tmp_path / "pl", shard=(0, 2), **FAST)
        with pytest.raises(DataError, match="the shards of a sharded run"):
            pseudo_label(teacher, images, tmp_path / "pl", **FAST)


def test_an_out_that_is_a_file_must_be_a_folder(setup, tmp_path):
    teacher, images = setup
    (tmp_path / "pl").write_text("not a folder")
    with pytest.raises(DataError, match=r"--out .*pl is a file; it must be a folder"):
        pseudo_label(teacher, images, tmp_path / "pl", **FAST)


def test_images_from_several_folders_and_a_list_file_keep_unique_ids(setup, tmp_path, capsys):
    from ssl_seg.cli import main

    teacher, images = setup
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    files = sorted(images.iterdir())
    for path in files[:2]:
        shutil.copy(path, first)
    for path in files[2:4]:
        shutil.copy(path, second)
    (tmp_path / "more.txt").write_text(f"# the fifth image\n{files[4].name}\n\n")
    shutil.copy(files[4], tmp_path)
    args = ["pseudo-label", "--checkpoint", str(teacher), "--out", str(tmp_path / "pl"), "--tile-size", "64",
            "--threshold", "0", "--device", "cpu", "--no-progress"]
    assert main([*args, "--images", str(first), str(second), str(tmp_path / "more.txt")]) == 0
    manifest = json.loads((tmp_path / "pl" / "manifest.json").read_text())
    assert sorted(manifest["images"]) == sorted(p.stem for p in files)
    capsys.readouterr()
    shutil.copy(files[0], second)  # the same id in two folders: one pseudo-label would stand for both
    assert main([*args, "--images", str(first), str(second)]) == 2
    err = capsys.readouterr().err
    assert f"share the id {files[0].stem!r}" in err and err.count("\n") == 1, err
    (tmp_path / "bad.txt").write_text("nowhere.jpg\n")
    assert main([*args, "--images", str(tmp_path / "bad.txt")]) == 2
    assert "bad.txt, line 1: image nowhere.jpg not found" in capsys.readouterr().err


def test_a_lock_held_only_by_a_killed_runs_workers_is_waited_for(tmp_path):
    """SIGKILL leaves the run's forked decoding workers holding its lock a few seconds: the next run waits."""
    import socket
    import subprocess
    import sys

    from ssl_seg.data.lock import LOCK_NAME, folder_lock

    out = tmp_path / "pl"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_NAME).write_text(f"pid {dead.stdout.strip()} on {socket.gethostname()}")
    worker = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(1.5)",
                               str(out / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    assert worker.stdout.readline().strip() == "locked"
    with folder_lock(out):  # refused at once before the fix
        assert worker.poll() is not None
    worker.wait()
