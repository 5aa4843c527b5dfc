"""The pipeline on real microscope files the project did not generate (skipped when absent)."""

import shutil

import numpy as np
import pytest
from sklearn.metrics import jaccard_score

from ssl_seg.cli import main
from ssl_seg.data.layout import discover

SMALL = ["--steps", "3", "--batch-size", "2", "--tile-size", "128", "--num-workers", "0", "--no-progress",
         "--set", "val_every=3", "warmup_steps=1"]


@pytest.fixture
def ss2_like(real_data, tmp_path):
    """An SS2 layout at 1024x1360: the published example (binary mask) and SS1 images as unlabeled."""
    root = tmp_path / "ss2"
    for sub in ("train/labeled", "train/labels", "train/unlabeled", "test", "answers"):
        (root / sub).mkdir(parents=True)
    example = real_data / "ss2_example"
    shutil.copy(example / "images" / "vyqade.JPG", root / "train/labeled/vyqade.JPG")
    shutil.copy(example / "labels" / "vyqade_gt.npy", root / "train/labels/vyqade_gt.npy")
    (root / "train/labels/binary_classes.csv").write_text("id,class\nvyqade,liptinite\n")
    for image in sorted((real_data / "ss1_unlabeled").glob("*.jpg"))[:3]:
        shutil.copy(image, root / "train/unlabeled" / image.name)
    shutil.copy(example / "images" / "vyqade.JPG", root / "test/vyqade.JPG")
    shutil.copy(example / "labels" / "vyqade_gt.npy", root / "answers/vyqade_gt.npy")
    return root


def test_ss2_layout_finetune_predict_evaluate_matches_sklearn(ss2_like, tmp_path, capsys):
    assert main(["finetune", "--data", str(ss2_like), "--out", str(tmp_path / "run"), *SMALL]) == 0
    assert main(["predict", "--checkpoint", str(tmp_path / "run"), "--images", str(ss2_like / "test"),
                 "--out", str(tmp_path / "pred"), "--tile-size", "512", "--no-progress"]) == 0
    pred = np.load(tmp_path / "pred" / "vyqade_pred.npy")
    assert pred.shape == (1024, 1360) and pred.dtype == np.uint8 and pred.max() <= 3

    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--labels", str(ss2_like / "answers"),
                 "--binary-class", "liptinite", "--json", str(tmp_path / "scores.json")]) == 0
    import json
    scores = json.loads((tmp_path / "scores.json").read_text())
    truth = np.where(np.load(ss2_like / "answers" / "vyqade_gt.npy") >= 128, 3, 0)
    for key, labels in (("micro_jaccard_all", [0, 1, 2, 3]), ("micro_jaccard_macerals", [1, 2, 3])):
        expected = jaccard_score(truth.ravel(), pred.ravel(), labels=labels, average="micro", zero_division=0)
        assert scores[key] == pytest.approx(expected, abs=1e-12)


def test_binary_example_refused_without_its_class(ss2_like, tmp_path, capsys):
    (ss2_like / "train/labels/binary_classes.csv").unlink()
    code = main(["finetune", "--data", str(ss2_like), "--out", str(tmp_path / "run"), *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "vyqade_gt.npy" in err and "--binary-class" in err


def test_coal_maceral_trains_and_predicts(real_data, tmp_path):
    root = tmp_path / "coal"
    shutil.copytree(real_data / "coal_maceral", root)
    index = discover(root)
    assert index.layout == "generic" and len(index.labeled) == 6
    assert main(["finetune", "--data", str(root), "--out", str(tmp_path / "run"), *SMALL]) == 0
    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "best.pth"), "--images", str(root / "images"),
                 "--out", str(tmp_path / "pred"), "--tile-size", "256", "--tta", "2", "--no-progress"]) == 0
    for sample in index.labeled:
        pred = np.load(tmp_path / "pred" / f"{sample.id}_pred.npy")
        assert pred.shape == sample.read_mask().shape
