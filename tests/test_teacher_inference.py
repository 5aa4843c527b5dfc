"""experiments/teacher_inference.py scores a checkpoint's trained and EMA weights at several scales."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ssl_seg.config import load_config
from ssl_seg.data.synthetic import write_dataset
from ssl_seg.evaluate import evaluate_dirs
from ssl_seg.predict import predict_folder
from ssl_seg.train.loop import train

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "teacher_inference.py"


def test_scale_one_of_the_trained_weights_matches_predict_and_evaluate(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, labeled=2, unlabeled=0, test=2, size=(64, 80), seed=4, progress=False)
    train(load_config(None, {"steps": 3, "batch_size": 2, "tile_size": 64, "num_workers": 0, "val_every": 3}),
          data, tmp_path / "teacher", progress=False)
    checkpoint = tmp_path / "teacher" / "best.pth"

    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--checkpoint", str(checkpoint), "--data", str(data),
                           "--scales", "1", "1+1.5", "--tta", "2", "--tile-size", "64", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["micro_jaccard_macerals"]
    assert sorted(rows) == ["ema 1", "ema 1+1.5", "trained 1", "trained 1+1.5"]
    assert all(0 <= score <= 1 for score in rows.values())

    predict_folder(checkpoint, data / "test", tmp_path / "pred", tile_size=64, tta=2, workers=0, progress=False)
    expected = evaluate_dirs(tmp_path / "pred", data / "test_answers")["micro_jaccard_macerals"]
    assert abs(rows["trained 1"] - expected) < 1e-9


def test_ema_model_holds_the_ema_weights(tmp_path, monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from teacher_inference import ema_model

    data = tmp_path / "data"
    write_dataset(data, labeled=2, unlabeled=0, test=0, size=(64, 80), seed=4, progress=False)
    train(load_config(None, {"steps": 2, "batch_size": 2, "tile_size": 64, "num_workers": 0, "val_every": 2}),
          data, tmp_path / "teacher", progress=False)
    state = torch.load(tmp_path / "teacher" / "best.pth", weights_only=True)
    weights = ema_model(tmp_path / "teacher" / "best.pth").state_dict()
    assert all(torch.equal(value, state["ema"][f"module.{name}"]) for name, value in weights.items())
    assert any(not torch.equal(value, state["model"][name]) for name, value in weights.items())
