"""The CUDA paths against the CPU: tiled TTA inference, SAM refinement, training and pseudo-labelling.

Skipped where no CUDA GPU is present (CI); run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_seg.config import load_config
from ssl_seg.data.io import read_mask
from ssl_seg.data.synthetic import write_dataset
from ssl_seg.inference import predict_proba
from ssl_seg.models import build_model
from ssl_seg.pseudo.sam import SamRefiner, prompts_from_labels, tiny_sam_config
from ssl_seg.train.checkpoint import load_model
from ssl_seg.train.loop import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
TINY = {"steps": 6, "batch_size": 4, "tile_size": 64, "val_every": 3, "log_every": 1, "image_every": 3,
        "warmup_steps": 1, "num_workers": 0, "lr": 2e-3, "device": "cuda"}


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    out, reference = out.detach().double().cpu(), reference.detach().double().cpu()
    return ((out - reference).norm() / reference.norm()).item()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_dataset(root, labeled=5, unlabeled=4, test=2, size=(72, 96), seed=3, progress=False)
    return root


@pytest.mark.parametrize(("amp", "tolerance"), [(False, 1e-3), (True, 2e-2)], ids=["fp32", "bf16"])
def test_tiled_tta_probabilities_match_the_cpu(amp, tolerance):
    torch.manual_seed(0)
    model = build_model("segformer-tiny").eval()
    images = torch.rand(2, 3, 150, 230)
    reference = predict_proba(model, images, tile_size=96, tta=8, amp=False)
    on_gpu = predict_proba(model.to(CUDA), images.to(CUDA), tile_size=96, tta=8, amp=amp)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    assert torch.isfinite(on_gpu).all()
    assert relative_error(on_gpu, reference) < tolerance


def test_sam_masks_match_the_cpu():
    model = build_tiny_sam()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    labels = np.zeros((96, 128), np.uint8)
    labels[8:40, 8:40], labels[50:90, 60:120], labels[10:30, 80:120] = 1, 2, 3
    confidence = np.full(labels.shape, 0.95, np.float32)
    prompts = prompts_from_labels(labels, confidence, 0.9, min_area=16)
    assert len(prompts) == 3
    cpu_logits, cpu_scores = SamRefiner(model).mask_logits(image, prompts)
    gpu_refiner = SamRefiner(build_tiny_sam(), device=CUDA)  # bf16 autocast on CUDA
    gpu_logits, gpu_scores = gpu_refiner.mask_logits(image, prompts)
    assert relative_error(gpu_logits, cpu_logits) < 3e-2
    assert relative_error(gpu_scores, cpu_scores) < 3e-2
    cpu_map, _ = SamRefiner(model).refine(image, labels, confidence, min_area=16)
    gpu_map, _ = gpu_refiner.refine(image, labels, confidence, min_area=16)
    assert (cpu_map == gpu_map).mean() > 0.98


def build_tiny_sam():
    from transformers import SamModel

    torch.manual_seed(0)
    return SamModel(tiny_sam_config(image_size=64)).eval()


@pytest.mark.parametrize("options", [{}, {"channels_last": True}, {"compile": True, "steps": 3}],
                         ids=["bf16", "channels_last", "compile"])
def test_finetune_on_cuda_loads_and_predicts_the_same_on_the_cpu(dataset, tmp_path, options):
    summary = train(load_config(None, {**TINY, **options}), dataset, tmp_path / "run", progress=False)
    assert np.isfinite(summary["micro_jaccard_macerals"])
    cpu_model, _ = load_model(tmp_path / "run" / "best.pth", torch.device("cpu"))
    gpu_model, _ = load_model(tmp_path / "run" / "best.pth", CUDA)
    images = torch.rand(1, 3, 72, 96)
    reference = predict_proba(cpu_model, images, tile_size=64, amp=False)
    assert relative_error(predict_proba(gpu_model, images.to(CUDA), tile_size=64, amp=False), reference) < 1e-3


def test_pseudo_label_then_pretrain_on_cuda(dataset, tmp_path):
    from ssl_seg.pseudo.run import pseudo_label

    train(load_config(None, TINY), dataset, tmp_path / "teacher", progress=False)
    masks = {}
    for device in ("cpu", "cuda"):
        stats = pseudo_label(tmp_path / "teacher" / "best.pth", dataset / "train" / "unlabeled", tmp_path / device,
                             threshold=0.0, refine="superpixel", tile_size=64, device=device, workers=0,
                             progress=False)
        assert stats["done"] == 4
        masks[device] = np.stack([read_mask(p, pseudo=True)
                                  for p in sorted((tmp_path / device / "masks").glob("*.png"))])
    # bf16 autocast on CUDA may flip a near-tie pixel, nothing more
    assert (masks["cpu"] == masks["cuda"]).mean() > 0.99
    student = load_config(None, {**TINY, "pseudo_labels": str(tmp_path / "cuda"), "labeled_ratio": 0.5,
                                 "init": str(tmp_path / "teacher" / "best.pth")})
    summary = train(student, dataset, tmp_path / "student", mode="pretrain", progress=False)
    assert np.isfinite(summary["micro_jaccard_macerals"])
    state = torch.load(tmp_path / "student" / "latest.pth", map_location="cpu", weights_only=True)
    assert state["step"] == TINY["steps"]
