"""Data safety and first-use promises: no silent overwrite, stale temporaries cleaned, SIGTERM like Ctrl-C,
a --help in workflow order, and a word when validation is too small to pick a checkpoint."""

import os
import signal
import time

import pytest

from ssl_seg.cli import build_parser, main
from ssl_seg.data.synthetic import write_dataset

FAST = ["--steps", "2", "--batch-size", "2", "--tile-size", "64", "--num-workers", "0", "--no-progress",
        "--set", "val_every=2", "warmup_steps=1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_dataset(root, labeled=4, unlabeled=0, test=1, size=(64, 80), seed=1, progress=False)
    return root


@pytest.mark.parametrize("resume", [False, True])
def test_a_best_pth_without_latest_is_never_overwritten(dataset, tmp_path, capsys, resume):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pth").write_bytes(b"a checkpoint someone keeps")
    code = main(["finetune", "--data", str(dataset), "--out", str(out), *FAST, *(["--resume"] if resume else [])])
    err = capsys.readouterr().err
    assert code == 2 and "best.pth but no latest.pth" in err and err.count("\n") == 1, err
    assert (out / "best.pth").read_bytes() == b"a checkpoint someone keeps"


def test_checkpoint_temporaries_of_a_killed_save_are_removed_by_the_next_run(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".latest.tmp-0123abcd.pth"
    stale.write_bytes(b"half a checkpoint")
    assert main(["finetune", "--data", str(dataset), "--out", str(out), *FAST]) == 0
    assert not stale.exists() and (out / "latest.pth").is_file()
    assert "removed unfinished checkpoint temporaries" in capsys.readouterr().err


def test_a_run_validating_on_fewer_than_three_images_says_so(dataset, tmp_path, capsys):
    assert main(["finetune", "--data", str(dataset), "--out", str(tmp_path / "run"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "validating on 1 image(s) picks best.pth by chance" in err and "--val-dir" in err, err


def test_sigterm_stops_predict_like_ctrl_c(tmp_path, capsys, monkeypatch):
    import ssl_seg.predict

    def predict_until_terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal arrives before this ends
        raise AssertionError("SIGTERM did not stop predict")

    monkeypatch.setattr(ssl_seg.predict, "predict_folder", predict_until_terminated)
    before = signal.getsignal(signal.SIGTERM)
    code = main(["predict", "--checkpoint", "x.pth", "--images", str(tmp_path), "--out", str(tmp_path / "pred")])
    err = capsys.readouterr().err
    assert code == 130 and "ssl-seg predict: interrupted" in err and "--skip-existing" in err, err
    assert signal.getsignal(signal.SIGTERM) is before


def test_help_lists_the_commands_in_workflow_order_without_markup():
    text = build_parser().format_help()
    order = ["synth", "finetune", "pseudo-label", "pretrain", "predict", "evaluate", "export", "report", "demo"]
    listed = text[text.index("{"):text.index("}") + 1]
    assert listed == "{" + ",".join(order) + "}" and "``" not in text


@pytest.mark.parametrize("command, option", [("pseudo-label", "--out"), ("pseudo-label", "--local-files-only"),
                                             ("pseudo-label", "--no-progress"), ("evaluate", "--pred"),
                                             ("evaluate", "--labels"), ("demo", "--out"), ("demo", "--seed"),
                                             ("demo", "--no-progress")])
def test_every_option_has_help(command, option):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    action = next(a for a in sub._actions if option in a.option_strings)
    assert action.help and len(action.help) > 8


@pytest.mark.parametrize("command", ["synth", "finetune", "pseudo-label", "pretrain", "predict", "evaluate", "export",
                                     "report", "demo"])
def test_a_usage_error_names_its_command_and_exits_2(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--no-such-flag"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and last.startswith(f"ssl-seg {command}: error: "), last


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device that is always full")
def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_previous_one(dataset, tmp_path, capsys,
                                                                                    monkeypatch):
    import torch

    out = tmp_path / "run"
    run = ["finetune", "--data", str(dataset), "--out", str(out), *FAST, "--steps", "4"]
    assert main([*run, "--stop-after", "2"]) == 0
    before = (out / "latest.pth").read_bytes()
    real_save = torch.save
    # every save goes to /dev/full, which fails as a full disk does: torch raises its own RuntimeError then
    monkeypatch.setattr(torch, "save", lambda obj, path, **kw: real_save(obj, "/dev/full", **kw))
    capsys.readouterr()
    code = main([*run, "--resume"])
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert code == 2 and err.count("error") == 1 and "Traceback" not in err, err
    assert last.startswith("ssl-seg finetune: error: cannot write checkpoint ") and "MB needed" in last, err
    assert "--resume" in last and ("best.pth" in last or "latest.pth" in last), err
    assert (out / "latest.pth").read_bytes() == before
    assert not list(out.glob(".*.tmp-*"))


@pytest.mark.parametrize("command", ["finetune", "pseudo-label"])
def test_a_tensorboard_log_that_cannot_be_written_is_one_line_without_thread_tracebacks(dataset, tmp_path, capsys,
                                                                                        monkeypatch, command):
    import errno

    from tensorboard.summary.writer import record_writer

    run = tmp_path / "run"
    if command == "pseudo-label":
        assert main(["finetune", "--data", str(dataset), "--out", str(run), *FAST]) == 0
        args = ["pseudo-label", "--checkpoint", str(run / "latest.pth"), "--images", str(dataset / "test"),
                "--out", str(tmp_path / "pseudo"), "--no-progress"]
        tb = tmp_path / "pseudo" / "tb"
    else:
        args, tb = ["finetune", "--data", str(dataset), "--out", str(run), *FAST], run / "tb"

    def full_disk(self, data):  # what TensorBoard's writer thread meets on a full disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(record_writer.RecordWriter, "write", full_disk)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "Exception in thread" not in err and "b'" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith(f"ssl-seg {command}: error: {tb}") and "No space left on device" in last, err


@pytest.mark.parametrize("command", ["finetune", "predict", "demo"])
def test_an_out_that_is_a_file_is_named_as_such(dataset, tmp_path, capsys, command):
    (tmp_path / "out").write_text("a file")
    args = {"finetune": ["finetune", "--data", str(dataset), *FAST],
            "predict": ["predict", "--checkpoint", "x.pth", "--images", str(dataset / "test")],
            "demo": ["demo", "--no-progress"]}[command]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == (f"ssl-seg {command}: error: --out {tmp_path / 'out'} is a file; it must be a folder "
                    "(a new one, or the --out of an earlier run)")


def test_masks_without_images_and_a_wrong_val_dir_say_so(dataset, tmp_path):
    import shutil

    from ssl_seg.config import load_config
    from ssl_seg.data.io import DataError
    from ssl_seg.data.layout import discover
    from ssl_seg.train.loop import train

    (tmp_path / "gen" / "masks").mkdir(parents=True)
    for mask in (dataset / "train" / "labels").iterdir():
        shutil.copy(mask, tmp_path / "gen" / "masks")
    with pytest.raises(DataError, match=r"gen/masks holds masks but .*gen/images is missing; fix: put their images"):
        discover(tmp_path / "gen")
    cfg = load_config(None, {"steps": 1, "val_dir": str(tmp_path / "nowhere"), "num_workers": 0})
    with pytest.raises(DataError, match=r"^--val-dir .*nowhere: dataset root .*nowhere: not found"):
        train(cfg, dataset, tmp_path / "run", progress=False)


def test_broken_symlinks_among_the_images_are_counted_and_named_once(dataset, tmp_path, capsys):
    import shutil

    from ssl_seg.data.layout import list_images

    folder = tmp_path / "images"
    shutil.copytree(dataset / "test", folder)
    for name in ("gone1.jpg", "gone2.png"):
        (folder / name).symlink_to(tmp_path / "unmounted" / name)
    assert [p.name for p in list_images(folder)] == [p.name for p in sorted((dataset / "test").iterdir())]
    list_images(folder)
    err = capsys.readouterr().err
    assert err == f"ssl-seg: skipping 2 broken symlink(s) in {folder} (their targets are gone): gone1.jpg, gone2.png\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device that is always full")
def test_a_full_disk_in_predict_names_the_mask_file(dataset, tmp_path, capsys, monkeypatch):
    import numpy as np

    run = tmp_path / "run"
    assert main(["finetune", "--data", str(dataset), "--out", str(run), *FAST]) == 0
    real_save = np.save
    # writes go to /dev/full, which fails as a full disk does (errno ENOSPC, no file name)
    monkeypatch.setattr(np, "save", lambda file, arr, **kw: real_save(open("/dev/full", "wb", buffering=0), arr, **kw))
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(run), "--images", str(dataset / "test"), "--out", str(tmp_path / "p"),
                 "--no-progress"])
    last = capsys.readouterr().err.splitlines()[-1]
    stem = next((dataset / "test").iterdir()).stem
    assert code == 2 and last.startswith(f"ssl-seg predict: error: {tmp_path / 'p' / stem}_pred.npy: No space left"), last
    assert not list((tmp_path / "p").glob(".*.tmp-*"))


def test_a_folder_without_write_access_is_named_not_the_hidden_temporary(tmp_path):
    import errno

    from ssl_seg.data.io import atomic_write

    with pytest.raises(PermissionError) as caught:  # what open() raises in a read-only folder
        with atomic_write(tmp_path / "run" / "latest.pth") as temp:
            raise PermissionError(errno.EACCES, "Permission denied", str(temp))
    assert caught.value.filename == str(tmp_path / "run") and caught.value.errno == errno.EACCES


def test_a_mask_in_the_stored_orientation_of_an_exif_rotated_image_says_so(tmp_path):
    import numpy as np
    from PIL import Image

    from ssl_seg.data.io import DataError
    from ssl_seg.data.layout import discover, validate

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: stored 40x64 (HxW), read as 64x40
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(tmp_path / "images" / "a.jpg", exif=exif)
    np.save(tmp_path / "masks" / "a_gt.npy", np.zeros((40, 64), np.uint8))
    with pytest.raises(DataError, match=r"carries an EXIF rotation \(orientation 6\).*reads as 64x40; fix: rotate"):
        validate(discover(tmp_path))
