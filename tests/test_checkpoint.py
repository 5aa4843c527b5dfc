"""Checkpoint files: every way one can be wrong is a CheckpointError naming the file, never a traceback."""

import pytest
import torch

from ssl_seg.models import build_model, model_spec
from ssl_seg.train.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint


@pytest.fixture(scope="module")
def state():
    model = build_model("segformer-tiny")
    return {"model": model.state_dict(), "model_spec": model_spec(model)}


def test_a_saved_checkpoint_rebuilds_the_same_model(state, tmp_path):
    save_checkpoint(tmp_path / "run" / "best.pth", state)
    model, _ = load_model(tmp_path / "run")  # a run folder names its best.pth
    for key, value in state["model"].items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def _without_first_weight(state):
    return {**state, "model": dict(list(state["model"].items())[1:])}


def _resized(state):
    other = build_model("dinov2-tiny")
    return {**state, "model": other.state_dict()}


def _no_config(state):
    return {**state, "model_spec": {k: v for k, v in state["model_spec"].items() if k != "hf_config"}}


@pytest.mark.parametrize("make, match", [
    (_without_first_weight, "do not fit the model"),
    (_resized, "do not fit the model"),
    (_no_config, "do not fit the model"),
    (lambda state: {"weights": state["model"]}, "holds no ssl-seg model"),
])
def test_tampered_checkpoints_are_refused(state, tmp_path, make, match):
    path = tmp_path / "bad.pth"
    torch.save(make(state), path)
    with pytest.raises(CheckpointError, match=match) as caught:
        load_model(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_unreadable_and_missing_checkpoints_are_refused(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "garbage.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "pseudo").mkdir()
    with pytest.raises(CheckpointError, match="folder without best.pth or latest.pth"):
        load_checkpoint(tmp_path / "pseudo")
