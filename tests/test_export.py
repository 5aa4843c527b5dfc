"""``ssl-seg export``: what transformers alone loads gives the logits of ssl_seg's own predict path."""

import json

import pytest
import torch
import torch.nn.functional as F

from ssl_seg.cli import main
from ssl_seg.data.synthetic import write_dataset

FAST = ["--steps", "1", "--batch-size", "2", "--tile-size", "64", "--num-workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_dataset(root / "data", labeled=3, unlabeled=0, test=1, size=(72, 96), seed=2, progress=False)
    assert main(["finetune", "--data", str(root / "data"), "--out", str(root / "run"), *FAST]) == 0
    assert main(["finetune", "--data", str(root / "data"), "--out", str(root / "dinov2"), *FAST,
                 "--model", "dinov2-tiny"]) == 0
    return root


@pytest.mark.parametrize("family", ["segformer", "dinov2"])
def test_an_export_loads_in_plain_transformers_with_the_same_probabilities(run, tmp_path, family):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    from ssl_seg.data.io import read_image
    from ssl_seg.inference import predict_proba, to_tensor
    from ssl_seg.train.checkpoint import load_model

    trained = run / ("run" if family == "segformer" else "dinov2")
    assert main(["export", "--checkpoint", str(trained), "--out", str(tmp_path / "exported")]) == 0
    folder = tmp_path / "exported"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "ssl_seg.json", "README.md"} <= {
        p.name for p in folder.iterdir()}
    # SegFormer is a transformers class; the DINOv2 segmenter's code travels in the folder
    model = AutoModelForSemanticSegmentation.from_pretrained(folder, local_files_only=True,
                                                             trust_remote_code=family == "dinov2").eval()
    assert type(model).__name__ == {"segformer": "SegformerForSemanticSegmentation",
                                    "dinov2": "MaceralDinov2ForSemanticSegmentation"}[family]
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    assert model.config.id2label == {0: "background", 1: "inertinite", 2: "vitrinite", 3: "liptinite"}
    image = read_image(next((run / "data" / "test").iterdir()))[:64, :64]  # one tile of predict: no padding
    with torch.no_grad():
        logits = model(**processor(image, return_tensors="pt")).logits
    probs = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False).softmax(dim=1)
    ours, _ = load_model(trained)
    expected = predict_proba(ours, to_tensor(image, torch.device("cpu")), tile_size=64)
    torch.testing.assert_close(probs, expected, atol=1e-4, rtol=1e-4)
    record = json.loads((folder / "ssl_seg.json").read_text())
    assert record["step"] == 1 and record["class_names"][3] == "liptinite" and len(record["checkpoint_sha256"]) == 64


def test_export_refuses_other_families_and_a_folder_in_use(run, tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("someone's file")
    assert main(["export", "--checkpoint", str(run / "run"), "--out", str(tmp_path / "used")]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (tmp_path / "used" / "keep.txt").read_text() == "someone's file"
    assert main(["finetune", "--data", str(run / "data"), "--out", str(tmp_path / "unet"), *FAST,
                 "--model", "unet-small"]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(tmp_path / "unet"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "holds a unet model, which has no transformers class" in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.tmp-*"))
