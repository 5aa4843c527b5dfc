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
    order = ["synth", "finetune", "pseudo-label", "pretrain", "predict", "evaluate", "report", "demo"]
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


@pytest.mark.parametrize("command", ["synth", "finetune", "pseudo-label", "pretrain", "predict", "evaluate", "report",
                                     "demo"])
def test_a_usage_error_names_its_command_and_exits_2(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--no-such-flag"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and last.startswith(f"ssl-seg {command}: error: "), last
