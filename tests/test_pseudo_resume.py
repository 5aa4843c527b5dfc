"""Pseudo-labelling killed with SIGKILL mid-run and restarted: every file valid, nothing redone."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from ssl_seg.config import load_config
from ssl_seg.data.io import read_mask
from ssl_seg.data.synthetic import write_dataset
from ssl_seg.train.loop import train


def command(teacher, images, out):
    return [sys.executable, "-m", "ssl_seg", "pseudo-label", "--checkpoint", str(teacher), "--images", str(images),
            "--out", str(out), "--tile-size", "64", "--tta", "8", "--threshold", "0.3", "--refine", "superpixel",
            "--no-progress"]


def test_kill_9_then_resume(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, labeled=3, unlabeled=40, test=0, size=(96, 128), seed=11, progress=False)
    train(load_config(None, {"steps": 2, "batch_size": 2, "tile_size": 64, "num_workers": 0, "val_every": 2}),
          data, tmp_path / "teacher", progress=False)
    out = tmp_path / "pl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command(tmp_path / "teacher", data / "train" / "unlabeled", out), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # "[!.]": a hidden temporary of an entry being written is not a finished image
    while time.time() < deadline and len(list((out / "entries").glob("[!.]*.json"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "entries").glob("[!.]*.json")}
    assert 3 <= len(finished) < 40, "the run must be killed part-way"

    stale = out / "masks" / ".planted.tmp-0000abcd.png"  # what a kill during a write leaves
    stale.write_bytes(b"partial")
    done = subprocess.run(command(tmp_path / "teacher", data / "train" / "unlabeled", out), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["skipped"] == len(finished) and stats["done"] == 40 - len(finished)
    # Nothing finished before the kill was written again.
    assert all((out / "entries" / name).stat().st_mtime_ns == mtime for name, mtime in finished.items())
    # Every file is complete and valid; no temporary file is left behind.
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["images"]) == 40
    for stem, entry in manifest["images"].items():
        mask = read_mask(out / entry["mask"], pseudo=True)
        assert mask.shape == (96, 128)
        assert np.asarray(Image.open(out / entry["confidence"])).shape == (96, 128)
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert leftovers == []
