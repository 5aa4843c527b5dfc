"""Validation during training: confusion-matrix metrics on whole images, and a few example panels."""

from __future__ import annotations

import torch

from ssl_seg import NUM_CLASSES
from ssl_seg.config import TrainConfig
from ssl_seg.data.io import read_image
from ssl_seg.inference import predict_proba, to_tensor
from ssl_seg.metrics import confusion_matrix, summarize


def evaluate_model(model, samples, cfg: TrainConfig, device, images_cache: dict) -> tuple[dict, list]:
    """Confusion-matrix metrics on full validation images, and a few (image, truth, pred) examples."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64, device=device)
    examples = []
    for sample in samples:
        if sample.id not in images_cache:
            images_cache[sample.id] = (read_image(sample.image), sample.read_mask())
        image, truth = images_cache[sample.id]
        probs = predict_proba(model, to_tensor(image, device), tile_size=cfg.tile_size * 2, tta=cfg.val_tta,
                              amp=cfg.amp)
        pred = probs[0].argmax(0)
        cm += confusion_matrix(torch.from_numpy(truth).to(device).long(), pred)
        if len(examples) < 3:
            examples.append((image, truth, pred.to(torch.uint8).cpu().numpy()))
    model.train(was_training)
    return summarize(cm.cpu().numpy()), examples
