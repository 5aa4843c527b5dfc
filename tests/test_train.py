"""End-to-end training on CPU: fine-tune, exact resume, TensorBoard tags, semi-supervised pretrain."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import at_third_step
from ssl_seg.cli import main
from ssl_seg.config import load_config
from ssl_seg.data.synthetic import write_dataset
from ssl_seg.evaluate import evaluate_dirs
from ssl_seg.predict import predict_folder
from ssl_seg.pseudo.run import pseudo_label
from ssl_seg.errors import TrainError
from ssl_seg.train.loop import train

TINY = {"steps": 6, "batch_size": 2, "tile_size": 64, "val_every": 3, "log_every": 1, "image_every": 3,
        "warmup_steps": 1, "num_workers": 0, "lr": 2e-3}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_dataset(root, labeled=5, unlabeled=4, test=2, size=(72, 96), seed=3, progress=False)
    return root


def tags(run_dir):
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0}).Reload()
    return set(events.Tags()["scalars"]), set(events.Tags()["images"])


def test_finetune_predict_evaluate(dataset, tmp_path):
    summary = train(load_config(None, TINY), dataset, tmp_path / "run", progress=False)
    assert 0.0 <= summary["micro_jaccard_macerals"] <= 1.0
    state = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert {"model", "ema", "optimizer", "scheduler", "step", "config", "class_names", "model_spec"} <= set(state)
    assert state["class_names"] == ["background", "inertinite", "vitrinite", "liptinite"]

    written = predict_folder(tmp_path / "run", dataset / "test", tmp_path / "pred", tile_size=64, tta=8,
                             overlays=True, progress=False, workers=0)
    assert len(written) == 2
    pred = np.load(written[0])
    assert pred.dtype == np.uint8 and pred.shape == (72, 96) and pred.max() <= 3
    from ssl_seg.data.io import read_image
    from ssl_seg.inference import predict_image
    from ssl_seg.train.checkpoint import load_model

    model, _ = load_model(tmp_path / "run")
    image = read_image(next(p for p in (dataset / "test").iterdir() if p.stem == written[0].name[:-len("_pred.npy")]))
    np.testing.assert_array_equal(pred, predict_image(model, image, torch.device("cpu"), tile_size=64, tta=8)[0])
    assert len(list((tmp_path / "pred" / "overlays").glob("*.jpg"))) == 2
    from PIL import Image

    with Image.open(tmp_path / "pred" / "overlays" / f"{written[0].name[:-len('_pred.npy')]}.jpg") as shown:
        assert shown.size == (96, 72 + 18)  # the image, and the legend under it
    result = evaluate_dirs(tmp_path / "pred", dataset / "test_answers")
    assert result["num_images"] == 2

    # --skip-existing keeps finished masks: an interrupted run finishes without redoing them
    kept, redone = written[0], written[1]
    np.save(kept, np.full_like(pred, 3))  # marks the file: a redo would overwrite it
    redone.unlink()
    for other in ({"tta": 1}, {"tta": 8, "tile_size": 96}):  # masks of other settings are not mixed in
        with pytest.raises(ValueError, match="other settings .* drop it to predict every image again"):
            predict_folder(tmp_path / "run", dataset / "test", tmp_path / "pred", **{"tile_size": 64, **other},
                           skip_existing=True, progress=False, workers=0)
    again = predict_folder(tmp_path / "run", dataset / "test", tmp_path / "pred", tile_size=64, tta=8,
                           skip_existing=True, progress=False, workers=0)
    assert again == [redone] and (np.load(kept) == 3).all()


def test_an_interrupted_rerun_with_other_settings_does_not_keep_the_older_masks(dataset, tmp_path, capsys):
    from ssl_seg.data.io import DataError

    train(load_config(None, {**TINY, "steps": 1}), dataset, tmp_path / "run", progress=False)
    first, second = sorted((dataset / "test").iterdir())
    images = tmp_path / "images"
    images.mkdir()
    for path in (first, second):
        (images / path.name).write_bytes(path.read_bytes())
    run = {"tile_size": 64, "progress": False, "workers": 0}
    predict_folder(tmp_path / "run", images, tmp_path / "pred", tta=1, **run)
    (images / f"{first.stem}b.jpg").write_bytes(b"not a jpeg")  # sorts between the two: stops the rerun there
    with pytest.raises(DataError):
        predict_folder(tmp_path / "run", images, tmp_path / "pred", tta=8, **run)
    assert "replacing 2 masks of other settings" in capsys.readouterr().err
    (images / f"{first.stem}b.jpg").unlink()
    again = predict_folder(tmp_path / "run", images, tmp_path / "pred", tta=8, skip_existing=True, **run)
    assert again == [tmp_path / "pred" / f"{second.stem}_pred.npy"]  # the tta=1 mask was not kept


@pytest.mark.parametrize("workers", [0, 1])  # 1: the error comes back from a DataLoader worker
def test_an_unreadable_image_keeps_the_masks_written_and_says_how_to_go_on(dataset, tmp_path, workers):
    from ssl_seg.data.io import DataError

    train(load_config(None, {**TINY, "steps": 1}), dataset, tmp_path / "run", progress=False)
    images = tmp_path / "images"
    images.mkdir()
    for path in (dataset / "test").iterdir():
        (images / path.name).write_bytes(path.read_bytes())
    (images / "zzz_broken.jpg").write_bytes(b"not a jpeg")  # sorts last: two masks are written before it
    with pytest.raises(DataError, match="zzz_broken.jpg.*then add --skip-existing to the same command") as info:
        predict_folder(tmp_path / "run", images, tmp_path / "pred", tile_size=64, progress=False, workers=workers)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    assert len(list((tmp_path / "pred").glob("*_pred.npy"))) == 2


def test_other_settings_into_a_folder_with_masks_of_other_images_are_refused(dataset, tmp_path):
    train(load_config(None, {**TINY, "steps": 1}), dataset, tmp_path / "run", progress=False)
    first, second = sorted((dataset / "test").iterdir())
    for name, path in (("a", first), ("b", second)):
        (tmp_path / name).mkdir()
        (tmp_path / name / path.name).write_bytes(path.read_bytes())
    run = {"tile_size": 64, "progress": False, "workers": 0}
    older = predict_folder(tmp_path / "run", tmp_path / "a", tmp_path / "pred", tta=1, **run)[0].read_bytes()
    # predict.json would then speak for the tta=1 mask of a as well
    with pytest.raises(ValueError, match=rf"holds 1 masks of other images .*tta 1 -> 8.*{first.stem}_pred.npy"):
        predict_folder(tmp_path / "run", tmp_path / "b", tmp_path / "pred", tta=8, **run)
    assert (tmp_path / "pred" / f"{first.stem}_pred.npy").read_bytes() == older  # nothing lost
    assert not (tmp_path / "pred" / f"{second.stem}_pred.npy").exists()
    predict_folder(tmp_path / "run", tmp_path / "b", tmp_path / "pred", tta=1, **run)  # same settings: added


def test_an_image_of_another_folder_under_the_same_id_is_refused(dataset, tmp_path):
    import shutil

    from ssl_seg.data.io import DataError

    train(load_config(None, {**TINY, "steps": 1}), dataset, tmp_path / "run", progress=False)
    first, second = sorted((dataset / "test").iterdir())
    for name, path in (("a", first), ("b", second)):  # two pictures under one file name
        (tmp_path / name).mkdir()
        (tmp_path / name / "IMG_0001.jpg").write_bytes(path.read_bytes())
    run = {"tile_size": 64, "progress": False, "workers": 0}
    older = predict_folder(tmp_path / "run", tmp_path / "a", tmp_path / "pred", **run)[0].read_bytes()
    with pytest.raises(DataError, match=r"IMG_0001_pred.npy, the mask of .*a/IMG_0001.jpg.*another --out"):
        predict_folder(tmp_path / "run", tmp_path / "b", tmp_path / "pred", **run)
    with pytest.raises(DataError, match="the mask of"):  # other settings would remove it: refused first
        predict_folder(tmp_path / "run", tmp_path / "b", tmp_path / "pred", **{**run, "tta": 2})
    assert (tmp_path / "pred" / "IMG_0001_pred.npy").read_bytes() == older
    predict_folder(tmp_path / "run", tmp_path / "a", tmp_path / "pred", **run)  # its own image again: fine
    shutil.copytree(tmp_path / "a", tmp_path / "copy")  # a copy of it, or a link to it: the same picture
    (tmp_path / "link").symlink_to(tmp_path / "a")
    for same in ("copy", "link"):
        predict_folder(tmp_path / "run", tmp_path / same, tmp_path / "pred", skip_existing=True, **run)


def test_a_run_says_what_it_trains_on_and_when_resume_finds_no_run(dataset, tmp_path, capsys):
    train(load_config(None, {**TINY, "steps": 1}), dataset, tmp_path / "run", progress=False, resume=True)
    err = capsys.readouterr().err
    assert f"no run in {tmp_path / 'run'} to resume (no latest.pth); starting a new one" in err
    assert "layout ss2 at" in err and "5 labeled, 4 unlabeled, 2 test; training on 4 labeled, validating on 1" in err
    train(load_config(None, {**TINY, "steps": 1}), dataset, tmp_path / "run", progress=False, resume=True)
    err = capsys.readouterr().err
    assert "no run in" not in err and f"resuming {tmp_path / 'run' / 'latest.pth'} at step 1 of 1" in err
    assert "best.pth holds the last step" not in err
    train(load_config(None, {**TINY, "steps": 1, "val_fraction": 0}), dataset, tmp_path / "all", progress=False)
    assert "validating on 0 (so best.pth holds the last saved step, not the best one)" in capsys.readouterr().err


def test_an_unreadable_validation_image_stops_the_run_before_its_first_step(dataset, tmp_path):
    import shutil

    from ssl_seg.data.io import DataError
    from ssl_seg.data.layout import discover
    from ssl_seg.train.data import split_validation

    shutil.copytree(dataset, tmp_path / "data")
    cfg = load_config(None, TINY)
    _, (val,) = split_validation(discover(tmp_path / "data").labeled, cfg.val_fraction, cfg.seed)
    val.image.write_bytes(val.image.read_bytes()[:400])  # a truncated JPEG: its header still reads
    with pytest.raises(DataError, match=val.image.name):  # not after 2 steps, before any validation
        train(cfg, tmp_path / "data", tmp_path / "run", progress=False, stop_after=2)
    assert not (tmp_path / "run" / "latest.pth").exists()


def test_init_decides_the_model_and_the_checkpoint_says_which(dataset, tmp_path, capsys):
    train(load_config(None, {**TINY, "steps": 1, "model": "dinov2-tiny"}), dataset, tmp_path / "teacher",
          progress=False)
    student = load_config(None, {**TINY, "steps": 2, "init": str(tmp_path / "teacher" / "latest.pth")})
    train(student, dataset, tmp_path / "student", progress=False, stop_after=1)
    assert "decides the model (dinov2-tiny); the configured segformer-tiny is not used" in capsys.readouterr().err
    state = torch.load(tmp_path / "student" / "latest.pth", weights_only=True)
    assert state["config"]["model"] == "dinov2-tiny" and state["model_spec"]["family"] == "dinov2"
    train(student, dataset, tmp_path / "student", progress=False, resume=True)  # --model segformer-tiny again
    assert (f"the resumed run {tmp_path / 'student' / 'latest.pth'} decides the model (dinov2-tiny); the configured "
            "segformer-tiny is not used") in capsys.readouterr().err
    assert torch.load(tmp_path / "student" / "latest.pth", weights_only=True)["config"]["model"] == "dinov2-tiny"


def test_resume_equals_uninterrupted(dataset, tmp_path):
    cfg = load_config(None, {**TINY, "steps": 8, "val_every": 4})
    train(cfg, dataset, tmp_path / "full", progress=False)
    train(cfg, dataset, tmp_path / "split", progress=False, stop_after=5)
    assert torch.load(tmp_path / "split" / "latest.pth", weights_only=True)["step"] == 5
    train(cfg, dataset, tmp_path / "split", progress=False, resume=True)
    full = torch.load(tmp_path / "full" / "latest.pth", weights_only=True)
    split = torch.load(tmp_path / "split" / "latest.pth", weights_only=True)
    assert split["step"] == full["step"] == 8
    for key, value in full["model"].items():
        torch.testing.assert_close(split["model"][key], value, rtol=0, atol=0, msg=key)
    for key, value in full["ema"].items():
        torch.testing.assert_close(split["ema"][key], value, rtol=0, atol=0, msg=key)
    # TensorBoard shows the same curves, including the evaluation at the step resumed from
    for tag in ("eval/micro_jaccard_macerals", "train/loss"):
        steps = [[e.step for e in EventAccumulator(str(tmp_path / run / "tb")).Reload().Scalars(tag)]
                 for run in ("full", "split")]
        assert steps[0] == steps[1], tag


def test_resume_reads_the_run_from_latest_and_refuses_other_settings(dataset, tmp_path):
    import shutil

    train(load_config(None, {**TINY, "steps": 2, "model": "dinov2-tiny"}), dataset, tmp_path / "teacher",
          progress=False)
    cfg = load_config(None, {**TINY, "init": str(tmp_path / "teacher" / "best.pth")})
    train(cfg, dataset, tmp_path / "run", progress=False, stop_after=2)
    shutil.rmtree(tmp_path / "teacher")  # e.g. the run copied to another machine without its --init
    with pytest.raises(TrainError, match=r"trained with steps 6 \(now 8\), lr 0.002 \(now 0.001\)"):
        train(load_config(None, {**TINY, "steps": 8, "lr": 1e-3}), dataset, tmp_path / "run", progress=False,
              resume=True)
    train(load_config(None, TINY), dataset, tmp_path / "run", progress=False, resume=True)  # no --init, no --model
    state = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert state["step"] == 6 and state["model_spec"]["family"] == "dinov2"


def test_resume_under_another_command_is_refused(dataset, tmp_path):
    train(load_config(None, {**TINY, "steps": 4}), dataset, tmp_path / "run", progress=False, stop_after=2)
    with pytest.raises(TrainError, match="is a finetune run; resume it with that command"):
        train(load_config(None, {**TINY, "steps": 4}), dataset, tmp_path / "run", mode="pretrain", progress=False,
              resume=True)


def test_best_checkpoint_is_the_best_evaluation(dataset, tmp_path):
    train(load_config(None, {**TINY, "steps": 8, "val_every": 2}), dataset, tmp_path / "run", progress=False)
    scores = EventAccumulator(str(tmp_path / "run" / "tb")).Reload().Scalars("eval/micro_jaccard_macerals")
    best = max(scores, key=lambda event: event.value)  # the first of equal scores, as training keeps it
    assert len(scores) == 4
    assert torch.load(tmp_path / "run" / "best.pth", weights_only=True)["step"] == best.step


def test_refuses_to_overwrite_a_run(dataset, tmp_path):
    cfg = load_config(None, {**TINY, "steps": 2})
    train(cfg, dataset, tmp_path / "run", progress=False)
    with pytest.raises(TrainError, match="--resume"):
        train(cfg, dataset, tmp_path / "run", progress=False)


def test_tensorboard_tags(dataset, tmp_path):
    train(load_config(None, TINY), dataset, tmp_path / "run", progress=False)
    scalars, images = tags(tmp_path / "run")
    expected = {"train/loss", "train/loss_x", "train/ce", "train/dice", "train/lr", "train/images_per_s",
                "time/data_s_per_step", "time/augment_s_per_step", "time/compute_s_per_step",
                "eval/micro_jaccard_macerals", "eval/micro_jaccard_all", "eval/iou/inertinite",
                "eval/iou/vitrinite", "eval/iou/liptinite", "eval/dice/liptinite"}
    assert expected <= scalars, expected - scalars
    assert "time/teacher_s_per_step" not in scalars  # fine-tuning has no EMA teacher to time
    assert {"eval/panel_0", "eval/confusion_matrix"} <= images


def test_pseudo_label_then_pretrain(dataset, tmp_path):
    train(load_config(None, TINY), dataset, tmp_path / "teacher", progress=False)
    # a 6-step teacher is nearly uniform (every class near 0.25): threshold 0 keeps its pixels
    stats = pseudo_label(tmp_path / "teacher", dataset / "train" / "unlabeled", tmp_path / "pl", threshold=0.0,
                         refine="superpixel", tile_size=64, workers=0, progress=False)
    assert stats["done"] == 4 and stats["skipped"] == 0 and stats["confident_fraction"] == 1.0
    manifest = json.loads((tmp_path / "pl" / "manifest.json").read_text())
    assert len(manifest["images"]) == 4
    entry = next(iter(manifest["images"].values()))
    assert set(entry["class_fractions"]) == {"background", "inertinite", "vitrinite", "liptinite"}
    assert entry["refiner"] == "superpixel"

    again = pseudo_label(tmp_path / "teacher", dataset / "train" / "unlabeled", tmp_path / "pl", threshold=0.0,
                         refine="superpixel", tile_size=64, workers=0, progress=False)
    assert again["done"] == 0 and again["skipped"] == 4

    cfg = load_config(None, {**TINY, "labeled_ratio": 0.5, "pseudo_labels": str(tmp_path / "pl"),
                             "init": str(tmp_path / "teacher" / "best.pth"), "consistency_threshold": 0.0})
    summary = train(cfg, dataset, tmp_path / "student", mode="pretrain", progress=False)
    assert "micro_jaccard_macerals" in summary
    scalars, _ = tags(tmp_path / "student")
    assert {"train/loss_pseudo", "train/loss_x", "train/loss_consistency", "train/mask_ratio",
            "time/teacher_s_per_step", "eval_teacher/micro_jaccard_macerals", "eval/micro_jaccard_macerals"} <= scalars
    events = EventAccumulator(str(tmp_path / "pl" / "tb" / "shard0"),
                              size_guidance={"scalars": 0, "images": 0}).Reload()
    assert {"pseudo/confident_fraction", "pseudo/changed_pixels", "pseudo/class_fraction/liptinite"} <= set(
        events.Tags()["scalars"])
    assert {"pseudo/overlay_0", "pseudo/class_histogram"} <= set(events.Tags()["images"])
    assert "pseudo/confidence" in events.Tags()["histograms"]


def test_pretrain_without_pseudo_labels_learns_the_unlabeled_images_online(dataset, tmp_path):
    cfg = load_config(None, {**TINY, "steps": 4, "labeled_ratio": 0.5, "consistency_threshold": 0.0})
    train(cfg, dataset, tmp_path / "online", mode="pretrain", progress=False)
    scalars, _ = tags(tmp_path / "online")
    assert {"train/loss_consistency", "train/mask_ratio"} <= scalars
    consistency = EventAccumulator(str(tmp_path / "online" / "tb")).Reload().Scalars("train/loss_consistency")
    assert all(event.value > 0 for event in consistency)  # threshold 0: every pixel of the teacher counts


def test_pretrain_without_pseudo_labels_needs_unlabeled_images(tmp_path):
    write_dataset(tmp_path / "labeled_only", 2, 0, 0, (64, 64), 0, progress=False)
    cfg = load_config(None, {**TINY, "steps": 2})
    with pytest.raises(TrainError, match="--pseudo-labels"):
        train(cfg, tmp_path / "labeled_only", tmp_path / "run", mode="pretrain", progress=False)


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = main(["finetune", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "missing" in err


def test_cli_error_from_a_dataloader_worker_is_one_line(dataset, tmp_path, capsys):
    import shutil

    shutil.copytree(dataset, tmp_path / "data")
    broken = sorted((tmp_path / "data" / "train" / "unlabeled").iterdir())[0]
    broken.write_bytes(b"not a jpeg")
    code = main(["pretrain", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--steps", "4",
                 "--batch-size", "8", "--tile-size", "64", "--num-workers", "1", "--no-progress",
                 "--set", "val_fraction=0", "labeled_ratio=0.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    *before, message = err.splitlines()  # before it: the run's data summary
    assert message.startswith("ssl-seg pretrain: error: ") and broken.name in message, err
    assert all(": error:" not in line for line in before), err


def test_a_run_stopped_by_a_worker_error_exits(dataset, tmp_path):
    # workers that ignore SIGTERM while the run lasts must still end when multiprocessing terminates
    # them at interpreter exit, or the process would wait for them forever after printing its error
    import shutil

    shutil.copytree(dataset, tmp_path / "data")
    broken = sorted((tmp_path / "data" / "train" / "unlabeled").iterdir())[0]
    broken.write_bytes(b"not a jpeg")
    command = [sys.executable, "-m", "ssl_seg", "pretrain", "--data", str(tmp_path / "data"), "--out",
               str(tmp_path / "run"), "--steps", "4", "--batch-size", "8", "--tile-size", "64", "--num-workers", "2",
               "--no-progress", "--set", "val_fraction=0", "labeled_ratio=0.5"]
    process = subprocess.run(command, capture_output=True, text=True, timeout=180,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert process.returncode == 2 and broken.name in process.stderr.splitlines()[-1], process.stderr[-3000:]


@pytest.mark.parametrize("flags", [["--set", "val_tta=3"], ["--set", "val_every=0"], ["--batch-size", "0"],
                                   ["--steps", "-3"], ["--device", "tpu"], ["--stop-after", "0"]])
def test_cli_refuses_bad_settings_before_writing_anything(dataset, tmp_path, capsys, flags):
    code = main(["finetune", "--data", str(dataset), "--out", str(tmp_path / "run"), "--no-progress", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


@pytest.fixture
def ctrl_c_as_in_a_terminal():
    """Python's own Ctrl-C handler, also when pytest runs as a background job (which ignores SIGINT)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])  # Ctrl-C; a scheduler's preemption
def test_ctrl_c_saves_the_step_and_resume_continues_it_exactly(dataset, tmp_path, monkeypatch, capsys,
                                                               ctrl_c_as_in_a_terminal, signal_name):
    import os
    import signal

    signum = getattr(signal, signal_name)
    handler_before = signal.getsignal(signum)

    import ssl_seg.train.loop as trainer

    cfg = load_config(None, {**TINY, "steps": 8, "val_every": 8})
    train(cfg, dataset, tmp_path / "full", progress=False)

    original = trainer.TrainAugment
    # the user presses Ctrl-C (or a scheduler sends SIGTERM) while step 3 runs
    monkeypatch.setattr(trainer, "TrainAugment", at_third_step(lambda: os.kill(os.getpid(), signum)))
    argv = ["finetune", "--data", str(dataset), "--out", str(tmp_path / "split"), "--no-progress",
            "--steps", "8", "--batch-size", "2", "--tile-size", "64", "--lr", "2e-3", "--num-workers", "0",
            "--set", "val_every=8", "log_every=1", "image_every=3", "warmup_steps=1"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "stopped after step 3" in err and "add --resume" in err, err
    assert signal.getsignal(signum) is handler_before  # the signal works as before again
    assert torch.load(tmp_path / "split" / "latest.pth", weights_only=True)["step"] == 3
    monkeypatch.setattr(trainer, "TrainAugment", original)
    assert main(argv + ["--resume"]) == 0
    full = torch.load(tmp_path / "full" / "latest.pth", weights_only=True)
    split = torch.load(tmp_path / "split" / "latest.pth", weights_only=True)
    for key, value in full["model"].items():
        torch.testing.assert_close(split["model"][key], value, rtol=0, atol=0, msg=key)


def test_ctrl_c_stays_ignored_where_it_was():
    import signal

    from ssl_seg.runtime import stop_on_interrupt

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup or in a background job
    try:
        with stop_on_interrupt() as requested:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
        assert requested == [] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited meanwhile
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.parametrize("target", ["group", "each process"])  # kill, torchrun; Slurm signals every process
def test_sigterm_to_the_process_group_saves_the_step(dataset, tmp_path, mark_third_step, target):
    # a scheduler's preemption signals the process and its DataLoader workers alike
    import os
    if target == "each process" and not Path("/proc/self/stat").exists():
        pytest.skip("lists a process's children through Linux /proc")
    import signal
    import time

    script, marks = mark_third_step
    run = tmp_path / "run"
    command = [sys.executable, str(script), "finetune", "--data", str(dataset), "--out", str(run), "--steps", "100000",
               "--batch-size", "2", "--tile-size", "64", "--num-workers", "2", "--no-progress",
               "--set", "val_every=100000", "warmup_steps=1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "MARKS": str(marks)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(marks.iterdir()):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.05)
        if target == "group":
            os.killpg(process.pid, signal.SIGTERM)
        else:
            workers = child_pids(process.pid)  # the two DataLoader workers (and any helper process)
            assert len(workers) >= 2, workers
            for pid in workers + [process.pid]:
                os.kill(pid, signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err[-3000:]
    step = torch.load(run / "latest.pth", weights_only=True)["step"]
    assert step >= 3 and f"interrupted (stopped after step {step}, saved in" in err


def test_cli_lists_only_the_checkpoints_written(dataset, tmp_path, capsys):
    code = main(["finetune", "--data", str(dataset), "--out", str(tmp_path / "run"), "--no-progress", "--steps", "6",
                 "--stop-after", "2", "--batch-size", "2", "--tile-size", "64", "--num-workers", "0",
                 "--set", "val_every=4"])
    captured = capsys.readouterr()
    assert code == 0 and "latest.pth" in captured.out and "best.pth" not in captured.out, captured.out
    assert "stopped at step 2 of 6 (--stop-after 2); add --resume" in captured.err
    finish = ["finetune", "--data", str(dataset), "--out", str(tmp_path / "run"), "--no-progress", "--steps", "6",
              "--batch-size", "2", "--tile-size", "64", "--num-workers", "0", "--set", "val_every=4", "--resume"]
    assert main(finish) == 0 and "stopped" not in capsys.readouterr().err
    assert main(finish) == 0 and "already finished all 6 steps; nothing to do" in capsys.readouterr().err


def test_cli_resume_takes_the_runs_settings_from_latest(dataset, tmp_path, capsys):
    run = ["finetune", "--data", str(dataset), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(run + ["--steps", "5", "--stop-after", "2", "--batch-size", "3", "--tile-size", "48", "--lr", "3e-3",
                       "--num-workers", "0", "--set", "val_every=4", "warmup_steps=1"]) == 0
    assert main(run + ["--resume"]) == 0, capsys.readouterr().err  # no flag retyped
    state = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert state["step"] == 5 and state["config"]["batch_size"] == 3 and state["config"]["lr"] == 3e-3
    assert state["config"]["tile_size"] == 48 and state["config"]["val_every"] == 4
    capsys.readouterr()
    assert main(run + ["--resume", "--lr", "1e-3"]) == 2  # a flag given now still has to match
    err = capsys.readouterr().err
    assert "lr 0.003 (now 0.001); resume with the run's own settings and data (flags and --config left out" in err


@pytest.mark.parametrize("settings, message", [
    ({"val_dir": "VAL"}, r"--val-dir .*VAL has no labeled images \(image \+ mask pairs\) to validate on"),
    ({"val_fraction": 0.99}, r"val_fraction 0.99 leaves none of the 5 labeled images of .* lower it"),
])
def test_validation_that_leaves_nothing_is_named(dataset, tmp_path, settings, message):
    if "val_dir" in settings:  # a folder of images without masks
        (tmp_path / "VAL").mkdir()
        for path in (dataset / "test").iterdir():
            (tmp_path / "VAL" / path.name).write_bytes(path.read_bytes())
        settings = {"val_dir": str(tmp_path / "VAL")}
    with pytest.raises(TrainError, match=message):
        train(load_config(None, {**TINY, **settings}), dataset, tmp_path / "run", progress=False)


def test_resume_on_other_pseudo_labels_is_refused(dataset, tmp_path, monkeypatch, capsys):
    train(load_config(None, {**TINY, "steps": 2}), dataset, tmp_path / "teacher", progress=False)
    for name, threshold, tile_size in (("pl", 0.0, 64), ("pl_other", 0.1, 64), ("pl_tiles", 0.0, 48)):
        pseudo_label(tmp_path / "teacher", dataset / "train" / "unlabeled", tmp_path / name, threshold=threshold,
                     refine="none", tile_size=tile_size, workers=0, progress=False)
    settings = {**TINY, "labeled_ratio": 0.5, "init": str(tmp_path / "teacher" / "best.pth")}
    monkeypatch.chdir(tmp_path)  # a relative --pseudo-labels: the run saves where it points
    train(load_config(None, {**settings, "pseudo_labels": "pl"}), dataset, tmp_path / "student",
          mode="pretrain", progress=False, stop_after=1)
    for other in ("pl_other", "pl_tiles"):
        with pytest.raises(TrainError, match=r"other pseudo-labels \(a folder of another teacher or other "
                                             r"pseudo-label settings; the counts match: labeled 4, val 1, unlabeled 4\)"):
            train(load_config(None, {**settings, "pseudo_labels": str(tmp_path / other)}), dataset,
                  tmp_path / "student", mode="pretrain", progress=False, resume=True)
    with pytest.raises(TrainError, match=r"pseudo-labels on \(now off\)"):
        train(load_config(None, settings), dataset, tmp_path / "student", mode="pretrain", progress=False, resume=True)
    monkeypatch.chdir(dataset)  # elsewhere: the saved settings still find the pseudo-labels
    assert main(["pretrain", "--data", str(dataset), "--out", str(tmp_path / "student"), "--resume",
                 "--no-progress"]) == 0, capsys.readouterr().err
    assert torch.load(tmp_path / "student" / "latest.pth", weights_only=True)["step"] == TINY["steps"]


def test_cli_module_entry_point(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ssl_seg", "synth", str(tmp_path / "d"), "--labeled", "1",
                           "--unlabeled", "1", "--test", "1", "--size", "64x64", "--no-progress"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "d" / "train" / "labels").glob("*_gt.npy"))) == 1


def test_init_checkpoint_decides_the_architecture(dataset, tmp_path):
    train(load_config(None, {**TINY, "steps": 2, "model": "dinov2-tiny"}), dataset, tmp_path / "dino", progress=False)
    # cfg.model keeps its default, segformer-tiny: the checkpoint decides
    cfg = load_config(None, {**TINY, "steps": 2, "init": str(tmp_path / "dino" / "latest.pth")})
    train(cfg, dataset, tmp_path / "again", progress=False)
    assert torch.load(tmp_path / "again" / "latest.pth", weights_only=True)["model_spec"]["family"] == "dinov2"


def test_pretrained_backbone_keeps_its_lr_scale_through_init(dataset, tmp_path):
    from transformers import Dinov2Model

    from ssl_seg.models.dinov2 import tiny_dinov2_config

    Dinov2Model(tiny_dinov2_config()).save_pretrained(tmp_path / "weights")
    hub = {**TINY, "steps": 2, "model": "dinov2", "pretrained": str(tmp_path / "weights"),
           "local_files_only": True, "backbone_lr_scale": 0.1}
    train(load_config(None, hub), dataset, tmp_path / "teacher", progress=False)
    # teacher -> student -> fine-tuned student: neither later run names --pretrained
    train(load_config(None, {**TINY, "steps": 2, "init": str(tmp_path / "teacher" / "latest.pth")}),
          dataset, tmp_path / "student", progress=False)
    train(load_config(None, {**TINY, "steps": 2, "init": str(tmp_path / "student" / "latest.pth")}),
          dataset, tmp_path / "finetuned", progress=False)
    for run in ("teacher", "student", "finetuned"):
        state = torch.load(tmp_path / run / "latest.pth", weights_only=True)
        backbone, head = (group["initial_lr"] for group in state["optimizer"]["param_groups"])
        assert state["pretrained_backbone"] is True
        assert backbone == pytest.approx(0.1 * head), run


def test_pseudo_label_folder_moves_with_its_images(dataset, tmp_path):
    import shutil

    train(load_config(None, {**TINY, "steps": 2}), dataset, tmp_path / "teacher", progress=False)
    shutil.copytree(dataset, tmp_path / "here" / "data")
    pseudo_label(tmp_path / "teacher", tmp_path / "here" / "data" / "train" / "unlabeled", tmp_path / "here" / "pl",
                 refine="none", threshold=0.0, tile_size=64, workers=0, progress=False)
    (tmp_path / "here").rename(tmp_path / "there")  # e.g. the project copied to a GPU machine
    moved = load_config(None, {**TINY, "steps": 2, "pseudo_labels": str(tmp_path / "there" / "pl")})
    train(moved, tmp_path / "there" / "data", tmp_path / "student", mode="pretrain", progress=False)
    assert torch.load(tmp_path / "student" / "latest.pth", weights_only=True)["step"] == 2

    shutil.move(tmp_path / "there" / "pl", tmp_path / "pl_alone")  # the images stay behind
    alone = load_config(None, {**TINY, "steps": 2, "pseudo_labels": str(tmp_path / "pl_alone")})
    with pytest.raises(TrainError, match="image\\(s\\) not found"):
        train(alone, tmp_path / "there" / "data", tmp_path / "student2", mode="pretrain", progress=False)


def test_broken_pseudo_label_folders_are_one_line_errors(dataset, tmp_path):
    image = sorted((dataset / "train" / "unlabeled").iterdir())[0]
    entry = {image.stem: {"image": str(image), "mask": f"masks/{image.stem}.png"}}
    cfg = load_config(None, {**TINY, "steps": 2, "pseudo_labels": str(tmp_path / "pl")})
    (tmp_path / "pl").mkdir()
    for text, match in [('{"images": {"a": {"ima', "not a readable pseudo-label manifest"),  # truncated
                        ("{}", "not a readable pseudo-label manifest"),
                        ("[1, 2]", "not a readable pseudo-label manifest"),
                        (json.dumps({"images": entry}), "1 pseudo mask\\(s\\) not found")]:
        (tmp_path / "pl" / "manifest.json").write_text(text)
        with pytest.raises(TrainError, match=match) as error:
            train(cfg, dataset, tmp_path / "student", mode="pretrain", progress=False)
        assert "\n" not in str(error.value) and "manifest.json" in str(error.value)
    images = dataset / "train" / "unlabeled"  # the images given where their pseudo-labels go
    with pytest.raises(TrainError, match=rf"{images} is a folder of images, not of pseudo-labels; .*--out PL"):
        train(load_config(None, {**TINY, "pseudo_labels": str(images)}), dataset, tmp_path / "s2", mode="pretrain",
              progress=False)



def test_a_pseudo_label_subfolder_or_an_unfinished_folder_says_what_to_pass(dataset, tmp_path):
    train(load_config(None, {**TINY, "steps": 1}), dataset, tmp_path / "teacher", progress=False)
    pseudo_label(tmp_path / "teacher" / "best.pth", dataset / "train" / "unlabeled", tmp_path / "pl",
                 threshold=0.0, tile_size=64, progress=False)
    with pytest.raises(TrainError, match=rf"{tmp_path / 'pl' / 'masks'} lies inside the pseudo-label folder "
                                         rf"{tmp_path / 'pl'} \(its masks/ or confidence/\); pass --pseudo-labels "
                                         rf"{tmp_path / 'pl'}$"):
        train(load_config(None, {**TINY, "pseudo_labels": str(tmp_path / "pl" / "masks")}), dataset, tmp_path / "s1",
              mode="pretrain", progress=False)
    (tmp_path / "pl" / "manifest.json").unlink()  # as a run stopped after its images, before the merge
    (tmp_path / "pl" / "entries" / sorted((tmp_path / "pl" / "entries").iterdir())[0].name).unlink()
    with pytest.raises(TrainError, match=r"has not finished \(3 image\(s\) done, no manifest.json yet\); rerun the "
                                         r"same `ssl-seg pseudo-label` command"):
        train(load_config(None, {**TINY, "pseudo_labels": str(tmp_path / "pl")}), dataset, tmp_path / "s2",
              mode="pretrain", progress=False)


@pytest.mark.parametrize("case", ["typo", "images folder", "ss2 train folder", "empty masks", "masks elsewhere"])
def test_no_labeled_images_says_why(dataset, tmp_path, case):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for path in sorted((dataset / "train" / "labeled").iterdir())[:2]:
        (root / "images" / path.name).write_bytes(path.read_bytes())
    (root / ("mask" if case == "typo" else "masks")).mkdir()
    if case in ("masks elsewhere", "images folder"):  # masks/ is the folder read; labels/ beside it is not
        (root / "labels").mkdir()
        for path in sorted((root / "images").iterdir()):
            np.save(root / ("labels" if case == "masks elsewhere" else "masks") / f"{path.stem}.npy",
                    np.zeros((72, 96), np.uint8))
    given, message = {
        "typo": (root, rf"{root} has images/ but no masks/ \(or labels/\) folder \(folders there: mask\); fix: "
                       rf"rename {root / 'mask'} to {root / 'masks'}$"),
        "images folder": (root / "images", rf"{root / 'images'} is a folder of images without masks; fix: pass the "
                                           rf"dataset folder above it, --data {root}$"),
        "ss2 train folder": (dataset / "train" / "labeled",
                             rf"fix: pass the dataset folder above it, --data {dataset}$"),
        "empty masks": (root, rf"{root / 'masks'} holds no masks; fix: put the masks there \(.npy, .png"),
        "masks elsewhere": (root, rf"{root / 'masks'} holds no masks; fix: move the masks of {root / 'labels'} into "
                                  rf"it, or remove the empty {root / 'masks'}$"),
    }[case]
    with pytest.raises(TrainError, match=rf"{given} has no labeled images to train on: .*{message}"):
        train(load_config(None, TINY), given, tmp_path / "run", progress=False)

def test_mean_teacher_predicts_in_eval_mode(dataset, tmp_path):
    from ssl_seg.models.segformer import SegformerSegmenter

    calls = []  # (grad enabled, training) of every whole-model forward

    def record(module, args):
        if isinstance(module, SegformerSegmenter):
            calls.append((torch.is_grad_enabled(), module.training))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        cfg = load_config(None, {**TINY, "steps": 4, "labeled_ratio": 0.5, "val_every": 2})
        train(cfg, dataset, tmp_path / "online", mode="pretrain", progress=False)
    finally:
        handle.remove()
    student = [training for grad, training in calls if grad]
    no_grad = [training for grad, training in calls if not grad]  # the EMA teacher and validation
    assert len(student) == 4 and all(student)
    assert len(no_grad) > 4 and not any(no_grad)


def test_mean_teacher_is_updated_every_step(dataset, tmp_path):
    train(load_config(None, {**TINY, "steps": 2}), dataset, tmp_path / "teacher", progress=False)
    cfg = load_config(None, {**TINY, "steps": 3, "labeled_ratio": 0.5,
                             "init": str(tmp_path / "teacher" / "latest.pth")})
    train(cfg, dataset, tmp_path / "student", mode="pretrain", progress=False)
    state = torch.load(tmp_path / "student" / "latest.pth", weights_only=True)
    assert int(state["ema"]["n_averaged"]) == 3
    start = torch.load(tmp_path / "teacher" / "latest.pth", weights_only=True)["model"]
    assert any(not torch.equal(state["ema"][f"module.{k}"], v) for k, v in start.items() if v.is_floating_point())


def test_consistency_leaves_out_padding(dataset, tmp_path, monkeypatch):
    import ssl_seg.train.methods.mean_teacher as trainer

    steps, real_cutmix, real_loss = [], trainer.cutmix, trainer.masked_cross_entropy

    def cutmix(*args, **kwargs):
        mixed = real_cutmix(*args, **kwargs)
        steps.append({"inside": mixed[-1].clone()})
        return mixed

    def masked_cross_entropy(logits, target, keep):
        steps[-1]["keep"] = keep.clone()
        return real_loss(logits, target, keep)

    monkeypatch.setattr(trainer, "cutmix", cutmix)
    monkeypatch.setattr(trainer, "masked_cross_entropy", masked_cross_entropy)
    # 72x96 images in 96x96 crops: a quarter of each unlabeled crop is padding
    cfg = load_config(None, {**TINY, "steps": 4, "tile_size": 96, "labeled_ratio": 0.5, "consistency_threshold": 0.0})
    train(cfg, dataset, tmp_path / "online", mode="pretrain", progress=False)
    assert len(steps) == 4 and all((step["inside"] == 0).any() for step in steps)
    for step in steps:
        assert not step["keep"][step["inside"] == 0].any()
        assert step["keep"][step["inside"] == 1].all()  # threshold 0: every other pixel counts


def test_checkpoints_from_before_a_run_key_existed_resume_with_its_old_value(tmp_path):
    from ssl_seg.config import TrainConfig
    from ssl_seg.train.resume import check_resumable

    old = {"mode": "pretrain", "config": {"steps": 600}}  # written before student_jitter existed: strong
    check_resumable(old, TrainConfig(student_jitter="strong"), "pretrain", tmp_path / "latest.pth")
    with pytest.raises(TrainError, match=r"student_jitter strong \(now weak\)"):
        check_resumable(old, TrainConfig(student_jitter="weak"), "pretrain", tmp_path / "latest.pth")


def test_an_image_unreadable_mid_run_saves_the_steps_done_and_resume_loses_none(dataset, tmp_path, monkeypatch):
    import shutil

    import ssl_seg.train.data as train_data
    import ssl_seg.train.loop as loop
    from ssl_seg.data.io import DataError
    from ssl_seg.data.layout import discover

    shutil.copytree(dataset, tmp_path / "data")
    images = [s.image for s in discover(tmp_path / "data").labeled]
    originals = {path: path.read_bytes() for path in images}
    real_on_device, calls = loop.on_device, []

    def on_device_then_corrupt(batch, device):  # after 3 steps every labeled image is truncated on disk
        calls.append(1)
        if len(calls) == 3:
            for path in images:
                path.write_bytes(originals[path][:400])
        return real_on_device(batch, device)

    monkeypatch.setattr(loop, "on_device", on_device_then_corrupt)
    uncached = train_data.CropDataset  # as for a set of over 512 images, read from disk at every draw
    monkeypatch.setattr(train_data, "CropDataset", lambda *args, **kwargs: uncached(*args, **{**kwargs, "cache": False}))
    cfg = load_config(None, {**TINY, "val_every": 100})
    with pytest.raises(DataError, match=r"steps up to 3 are saved in .*latest\.pth.*--resume"):
        train(cfg, tmp_path / "data", tmp_path / "run", progress=False)
    assert torch.load(tmp_path / "run" / "latest.pth", weights_only=True)["step"] == 3
    for path, data in originals.items():
        path.write_bytes(data)
    train(cfg, tmp_path / "data", tmp_path / "run", progress=False, resume=True)
    assert torch.load(tmp_path / "run" / "latest.pth", weights_only=True)["step"] == 6
