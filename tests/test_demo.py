"""``ssl-seg demo`` end to end at a tiny budget: both arms, the teacher row, the files it promises."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from ssl_seg.data.io import read_mask
from ssl_seg.demo import DemoConfig, run_demo

TINY = {"labeled": 3, "unlabeled": 6, "test": 2, "size": [96, 128], "total_steps": 8, "teacher_steps": 4,
        "batch_size": 2, "tile_size": 64, "num_workers": 0, "tta": 2,
        "threshold": 0.0}  # a 4-step teacher is confident nowhere: keep every pixel


@pytest.mark.parametrize("pretrain_steps", [2, 4], ids=["with-student-finetune", "pretrain-only"])
def test_demo_runs_both_arms(tmp_path, capsys, pretrain_steps):
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump({**TINY, "pretrain_steps": pretrain_steps}))
    results = run_demo(tmp_path / "out", seed=0, config=config, progress=False)

    assert list(results) == ["supervised", "teacher (4 steps)", "semi-supervised"]
    for scores in results.values():
        assert 0.0 <= scores["micro_jaccard_macerals"] <= 1.0 and 0.0 <= scores["micro_jaccard_all"] <= 1.0
    # equal total steps: the supervised arm trains them all; teacher + student pretrain (+ fine-tune) share them
    step = {run.name: torch.load(run / "latest.pth", weights_only=True)["step"]
            for run in (tmp_path / "out" / "runs").iterdir()}
    assert step["supervised"] == 8 and step["teacher"] == 4 and step["student_pretrain"] == pretrain_steps
    assert step["teacher"] + step["student_pretrain"] + step.get("student", 0) == 8
    printed = capsys.readouterr().out
    assert "semi-supervised" in printed and "teacher (4 steps)" in printed
    out = tmp_path / "out"
    assert (out / "runs" / "student").exists() == (pretrain_steps < 4)  # a fine-tune only when steps are left
    manifest = json.loads((out / "pseudo" / "manifest.json").read_text())
    assert len(manifest["images"]) == 6 and manifest["tta"] == 2 and manifest["threshold"] == 0.0
    saved = json.loads((out / "demo_results.json").read_text())
    assert set(saved["results"]) == set(results) and saved["config"]["pretrain_steps"] == pretrain_steps
    assert (out / "report" / "report.html").is_file()


def test_demo_oracle_student_learns_the_true_masks(tmp_path):
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump({**TINY, "pretrain_steps": 4, "oracle": True}))
    results = run_demo(tmp_path / "out", seed=0, config=config, progress=False)

    assert list(results)[-1] == "oracle student (true masks)"
    out = tmp_path / "out"
    manifest = json.loads((out / "oracle_labels" / "manifest.json").read_text())
    assert len(manifest["images"]) == 6
    first = next(iter(manifest["images"]))
    truth = np.load(out / "data" / "train" / "unlabeled_truth" / f"{first}_gt.npy")
    np.testing.assert_array_equal(read_mask(out / "oracle_labels" / "masks" / f"{first}.png", pseudo=True), truth)
    assert (out / "runs" / "oracle_student_pretrain" / "best.pth").is_file()


def test_demo_config_rejects_unknown_keys_and_bad_budgets(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("total_step: 10\n")
    with pytest.raises(ValueError, match="unknown demo key"):
        DemoConfig.from_yaml(bad)
    over = tmp_path / "over.yaml"
    over.write_text(yaml.safe_dump({**TINY, "pretrain_steps": 5}))
    with pytest.raises(ValueError, match="at most total_steps"):
        run_demo(tmp_path / "out", config=over, progress=False)


def test_a_demo_folder_refuses_other_settings_but_not_other_arms(tmp_path):
    from ssl_seg.demo import _check_same_demo

    _check_same_demo(tmp_path, 0, DemoConfig(labeled=3))
    _check_same_demo(tmp_path, 0, DemoConfig(labeled=3, oracle=True, num_workers=0))  # adds an arm: resumes
    with pytest.raises(ValueError, match=r"other settings \(labeled 3 -> 6\)"):
        _check_same_demo(tmp_path, 0, DemoConfig(labeled=6))
    with pytest.raises(ValueError, match=r"seed 0 -> 1"):
        _check_same_demo(tmp_path, 1, DemoConfig(labeled=3))
