"""Checkpoints written by ssl_seg 0.1.10 (tests/fixtures/checkpoint_0_1_10, made by the script beside it)
still load, predict and resume."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_seg.config import TrainConfig
from ssl_seg.data.synthetic import write_dataset
from ssl_seg.predict import predict_folder
from ssl_seg.train.checkpoint import load_model
from ssl_seg.train.loop import train

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_0_1_10"


def test_the_fixture_is_of_0_1_10():
    assert (FIXTURE / "VERSION").read_text().strip() == "0.1.10"


def test_an_0_1_10_checkpoint_predicts(tmp_path):
    model, state = load_model(FIXTURE / "best.pth")
    assert state["model_spec"]["family"] == "segformer" and state["step"] == 2
    write_dataset(tmp_path / "data", 3, 0, 0, (64, 80), 0, progress=False)
    written = predict_folder(FIXTURE, tmp_path / "data" / "train" / "labeled", tmp_path / "pred", tile_size=64,
                             device="cpu", workers=0, progress=False)
    assert len(written) == 3
    mask = np.load(written[0])
    assert mask.shape == (64, 80) and set(np.unique(mask)) <= {0, 1, 2, 3}


def test_an_0_1_10_run_resumes_to_its_end(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "latest.pth").write_bytes((FIXTURE / "latest.pth").read_bytes())
    write_dataset(tmp_path / "data", 3, 0, 0, (64, 80), 0, progress=False)  # the data it was trained on
    cfg = TrainConfig(steps=4, batch_size=2, tile_size=32, warmup_steps=1, val_fraction=0.34, val_every=2,
                      num_workers=0, device="cpu")
    train(cfg, tmp_path / "data", run, resume=True, progress=False)
    state = torch.load(run / "latest.pth", weights_only=True)
    assert state["step"] == 4 and state["model_spec"]["family"] == "segformer"
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg, tmp_path / "data", run, progress=False)
