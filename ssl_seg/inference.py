"""Full-image inference: tiled sliding window, optional flip/rot90 test-time augmentation."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from ssl_seg.data.tiling import sliding_window


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def _dihedral_inverse(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.flip(x, dims=(-1,)) if flip else x
    return torch.rot90(x, -k, dims=(-2, -1))


TTA_TRANSFORMS = {1: [(0, False)], 2: [(0, False), (0, True)],
                  8: [(k, f) for f in (False, True) for k in range(4)]}


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA, nothing elsewhere (CPU bf16 is slower than fp32 on most CPUs)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 HxWx3 -> float (1, 3, H, W) in [0, 1] on ``device``."""
    image = np.ascontiguousarray(image) if image.flags.writeable else image.copy()
    tensor = torch.from_numpy(image).to(device, non_blocking=True)
    return tensor.permute(2, 0, 1).unsqueeze(0).float().div_(255)


@torch.inference_mode()
def predict_proba(model: torch.nn.Module, images: torch.Tensor, tile_size: int = 512, overlap: float = 0.25,
                  tta: int = 1, batch_size: int = 8, amp: bool = True) -> torch.Tensor:
    """Class probabilities (B, C, H, W) for float images (B, 3, H, W) in [0, 1] of any size.

    ``tta`` is 1 (none), 2 (horizontal flip) or 8 (all flips and 90-degree turns); the
    probabilities of the views are averaged after each view is mapped back.
    """
    if tta not in TTA_TRANSFORMS:
        raise ValueError(f"--tta must be 1, 2 or 8, not {tta}")

    def tile_probs(tiles: torch.Tensor) -> torch.Tensor:
        with autocast_for(tiles.device, amp):
            return model(tiles).float().softmax(dim=1)

    total = None
    for k, flip in TTA_TRANSFORMS[tta]:
        probs = sliding_window(tile_probs, _dihedral(images, k, flip), tile_size, overlap, batch_size)
        probs = _dihedral_inverse(probs, k, flip)
        total = probs if total is None else total + probs
    return total / len(TTA_TRANSFORMS[tta])


def predict_image(model: torch.nn.Module, image: np.ndarray, device: torch.device,
                  **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(labels uint8 HxW, confidence float32 HxW) for one uint8 RGB image."""
    probs = predict_proba(model, to_tensor(image, device), **kwargs)[0]
    confidence, labels = probs.max(dim=0)
    return labels.to(torch.uint8).cpu().numpy(), confidence.cpu().numpy()
