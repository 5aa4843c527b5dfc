"""experiments/pseudo_label_quality.py scores a pseudo-label folder against the procedural truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ssl_seg.data.io import save_json, save_png
from ssl_seg.data.synthetic import write_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "pseudo_label_quality.py"


def test_scores_pseudo_labels_against_the_generator_truth(tmp_path):
    data, pseudo = tmp_path / "data", tmp_path / "pseudo"
    write_dataset(data, labeled=1, unlabeled=2, test=1, size=(64, 80), seed=3, progress=False, unlabeled_truth=True)
    truths = sorted((data / "train" / "unlabeled_truth").glob("*_gt.npy"))
    entries = {}
    for number, path in enumerate(truths):
        image_id = path.name.replace("_gt.npy", "")
        mask = np.load(path).copy()
        if number == 0:  # first image: right labels, but its top half not confident
            mask[:32] = 255
        else:  # second image: left half's macerals called background, right half's another maceral
            mask[:, :40][mask[:, :40] > 0] = 0
            right = mask[:, 40:]
            right[right > 0] = right[right > 0] % 3 + 1
        save_png(pseudo / "masks" / f"{image_id}.png", mask)
        entries[image_id] = {"mask": f"masks/{image_id}.png"}
    save_json(pseudo / "manifest.json", {"threshold": 0.9, "images": entries})

    out = tmp_path / "quality.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--seed", "3", "--pseudo", str(pseudo),
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())

    first, second = (np.load(p) for p in truths)
    assert result["labelled_fraction"] == (first[32:].size + second.size) / (first.size + second.size)
    # the SS2 score over the labelled pixels: a maceral read as another counts against both classes
    fg_first, fg_left, fg_right = (int((part > 0).sum()) for part in (first[32:], second[:, :40], second[:, 40:]))
    assert fg_right > 0
    assert result["foreground_micro_jaccard"] == fg_first / (fg_first + fg_left + 2 * fg_right)
    # no pixel is wrongly called inertinite: the right half of the second image holds only vitrinite
    assert result["classes"]["inertinite"]["precision"] == 1.0
    assert result["classes"]["background"]["precision"] < 1.0
    assert "foreground micro Jaccard" in done.stdout
