"""DINOv2 feature teacher: class prototypes in DINOv2 patch-feature space.

DINOv2 patch features group pixels by material well without any training. Fitting keeps the
mean normalised feature of the pure patches of each class in the labeled images (optionally k
prototypes per class by spherical k-means); prediction is a softmax over cosine similarities.
Used as a second opinion beside the segmentation teacher: `combine` keeps pixels where both
agree and drops the rest.

Example (tiny random model, as in the tests):
    >>> import numpy as np
    >>> from transformers import Dinov2Model
    >>> from ssl_seg.models.dinov2 import tiny_dinov2_config
    >>> teacher = Dinov2FeatureTeacher(Dinov2Model(tiny_dinov2_config()), resolution=64)
    >>> image = np.zeros((64, 64, 3), np.uint8); image[:, 32:] = 255
    >>> mask = np.zeros((64, 64), np.uint8); mask[:, 32:] = 2
    >>> probs = teacher.fit([(image, mask)]).predict_proba(image)
    >>> probs.shape, bool(np.allclose(probs.sum(0), 1, atol=1e-5))
    ((4, 64, 64), True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ssl_seg import IGNORE_INDEX, NUM_CLASSES
from ssl_seg.models.hub import load_pretrained
from ssl_seg.pseudo.refine import as_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Dinov2FeatureTeacher:
    """Nearest-prototype classifier on dense DINOv2 features (hub id, local folder or in-memory model).

    `resolution` is the target short side in pixels (rounded to a multiple of the patch size);
    `temperature` scales cosine similarities before the softmax; `prototypes_per_class` > 1
    runs a few spherical k-means iterations per class.
    """

    def __init__(
        self,
        model,
        device: str | torch.device = "cpu",
        resolution: int = 448,
        temperature: float = 0.07,
        prototypes_per_class: int = 1,
        num_classes: int = NUM_CLASSES,
        max_patches_per_class: int = 50_000,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        config = model.config
        self.patch_size = int(config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0])
        # CLS first, then register tokens (Dinov2WithRegisters), then the patch grid.
        self.prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self.hidden_size = int(config.hidden_size)
        self.resolution = int(resolution)
        self.temperature = float(temperature)
        self.prototypes_per_class = int(prototypes_per_class)
        self.num_classes = int(num_classes)
        self.max_patches_per_class = int(max_patches_per_class)
        self.prototypes = torch.empty(0, self.hidden_size)
        self.prototype_classes = torch.empty(0, dtype=torch.int64)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0

    @classmethod
    def from_pretrained(
        cls, name_or_dir: str, *, local_files_only: bool = False, device: str | torch.device = "cpu", **kwargs
    ) -> Dinov2FeatureTeacher:
        """Load a DINOv2 model (with or without registers) from a hub id or a save_pretrained folder.

        A missing model raises `ssl_seg.models.hub.ModelLoadError` with a one-line fix.
        """
        from transformers import AutoModel

        # AutoModel picks Dinov2Model or Dinov2WithRegistersModel from the config.
        model = load_pretrained(AutoModel, name_or_dir, local_files_only=local_files_only, family="DINOv2")
        return cls(model, device=device, **kwargs)

    @property
    def fitted(self) -> bool:
        return self.prototypes.shape[0] > 0

    def _autocast(self):
        if self.device.type == "cuda" and next(self.model.parameters()).dtype == torch.float32:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) for an image: short side ~ resolution, both sides multiples of the patch."""
        patch = self.patch_size
        short_patches = max(1, round(self.resolution / patch))
        scale = short_patches * patch / min(height, width)
        if height <= width:
            return short_patches, max(1, round(width * scale / patch))
        return max(1, round(height * scale / patch)), short_patches

    def features(self, image: np.ndarray) -> torch.Tensor:
        """Dense L2-normalised patch features (D, h, w), float32 on the teacher's device."""
        image = as_rgb(image)
        grid_h, grid_w = self.grid_shape(*image.shape[:2])
        pixels = torch.from_numpy(np.array(image)).to(self.device).permute(2, 0, 1)[None].float()
        size = (grid_h * self.patch_size, grid_w * self.patch_size)
        pixels = F.interpolate(pixels, size, mode="bilinear", align_corners=False, antialias=True)
        pixels = ((pixels - self.mean) / self.std).to(next(self.model.parameters()).dtype)
        with torch.inference_mode(), self._autocast():
            hidden = self.model(pixel_values=pixels).last_hidden_state
        patches = hidden[0, self.prefix_tokens :].float()
        features = patches.T.reshape(self.hidden_size, grid_h, grid_w)
        return F.normalize(features, dim=0)

    def _pure_patch_classes(self, mask: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        """Class per patch (h*w,), -1 where the patch mixes classes or holds ignore/unknown values."""
        patch = self.patch_size
        size = (grid[0] * patch, grid[1] * patch)
        values = torch.from_numpy(mask.astype(np.int64))[None, None].float()
        values = F.interpolate(values, size, mode="nearest-exact")[0, 0].long()
        blocks = values.view(grid[0], patch, grid[1], patch).permute(0, 2, 1, 3).reshape(grid[0] * grid[1], -1)
        low, high = blocks.min(dim=1).values, blocks.max(dim=1).values
        pure = (low == high) & (low < self.num_classes) & (low != IGNORE_INDEX)
        return torch.where(pure, low, torch.full_like(low, -1))

    def fit(self, samples: Iterable[tuple[np.ndarray, np.ndarray]], seed: int = 0) -> Dinov2FeatureTeacher:
        """Build class prototypes from (image uint8 HxWx3, mask uint8 HxW with 0..C-1 / 255) pairs.

        Only patches whose (resized) mask holds a single class vote. Classes never seen get no
        prototype and are never predicted. Returns self.
        """
        generator = torch.Generator().manual_seed(seed)
        pools: dict[int, list[torch.Tensor]] = {c: [] for c in range(self.num_classes)}
        pool_sizes = dict.fromkeys(pools, 0)
        for index, (image, mask) in enumerate(samples):
            if mask.shape != image.shape[:2]:
                raise ValueError(
                    f"sample {index}: mask shape {mask.shape} differs from image shape {image.shape[:2]}: "
                    "pass the mask of the same image"
                )
            features = self.features(image).cpu()
            patch_classes = self._pure_patch_classes(mask, features.shape[1:])
            flat = features.flatten(1).T  # (h*w, D)
            for class_id in pools:
                chosen = flat[patch_classes == class_id]
                if len(chosen):
                    pools[class_id].append(chosen)
                    pool_sizes[class_id] += len(chosen)
                # Keep memory bounded on large label sets: random subsample past twice the cap.
                if pool_sizes[class_id] > 2 * self.max_patches_per_class:
                    pooled = torch.cat(pools[class_id])
                    keep = torch.randperm(len(pooled), generator=generator)[: self.max_patches_per_class]
                    pools[class_id], pool_sizes[class_id] = [pooled[keep]], self.max_patches_per_class
        prototypes, classes = [], []
        for class_id, parts in pools.items():
            if not parts:
                continue
            centres = spherical_kmeans(torch.cat(parts), self.prototypes_per_class, generator=generator)
            prototypes.append(centres)
            classes += [class_id] * len(centres)
        if not prototypes:
            raise ValueError("no pure patch of any class in the samples: pass labeled images with non-empty masks")
        self.prototypes = torch.cat(prototypes)
        self.prototype_classes = torch.tensor(classes, dtype=torch.int64)
        return self

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities (C, H, W) float32: softmax of the best cosine similarity per class / temperature."""
        if not self.fitted:
            raise ValueError("the DINOv2 feature teacher has no prototypes: call fit() or load_state_dict() first")
        height, width = image.shape[:2]
        features = self.features(image)
        grid = features.shape[1:]
        similarity = self.prototypes.to(self.device) @ features.flatten(1)  # (P, h*w)
        per_class = torch.full((self.num_classes, similarity.shape[1]), -torch.inf, device=self.device)
        index = self.prototype_classes.to(self.device)[:, None].expand_as(similarity)
        per_class = per_class.scatter_reduce(0, index, similarity, reduce="amax")
        probs = torch.softmax(per_class / self.temperature, dim=0).view(1, self.num_classes, *grid)
        # Bilinear upsampling of probabilities keeps them summing to one.
        probs = F.interpolate(probs, (height, width), mode="bilinear", align_corners=False)[0]
        return probs.cpu().numpy().astype(np.float32)

    def state_dict(self) -> dict:
        """Prototypes and settings, for torch.save."""
        return {
            "prototypes": self.prototypes.cpu(),
            "prototype_classes": self.prototype_classes.cpu(),
            "num_classes": self.num_classes,
            "temperature": self.temperature,
            "resolution": self.resolution,
            "hidden_size": self.hidden_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned (the backbone must have the same feature size)."""
        if int(state["hidden_size"]) != self.hidden_size:
            raise ValueError(
                f"saved prototypes have {state['hidden_size']} features but this DINOv2 has {self.hidden_size}: "
                "load the same DINOv2 model the prototypes were fitted with"
            )
        self.prototypes = state["prototypes"].float().cpu()
        self.prototype_classes = state["prototype_classes"].long().cpu()
        self.num_classes = int(state["num_classes"])
        self.temperature = float(state["temperature"])
        self.resolution = int(state["resolution"])


def spherical_kmeans(
    points: torch.Tensor, k: int, iterations: int = 10, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Up to k unit-norm centres of unit-norm points (n, D) by cosine k-means; k=1 is the normalised mean."""
    if k <= 1 or len(points) <= k:
        centres = points.mean(dim=0, keepdim=True) if k <= 1 else points.clone()
        return F.normalize(centres, dim=1)
    # Farthest-point initialisation: a random first centre, then the least similar point each time.
    chosen = [int(torch.randint(len(points), (1,), generator=generator))]
    closest = points @ points[chosen[0]]
    for _ in range(k - 1):
        chosen.append(int(closest.argmin()))
        closest = torch.maximum(closest, points @ points[chosen[-1]])
    centres = points[chosen].clone()
    for _ in range(iterations):
        assignment = (points @ centres.T).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k)
        # An empty cluster keeps its previous centre.
        centres = torch.where((counts > 0)[:, None], F.normalize(sums, dim=1), centres)
    return centres


def combine(
    teacher_probs: np.ndarray, feature_probs: np.ndarray, agree_boost: float = 0.5
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Merge the segmentation teacher with the feature teacher (both (C, H, W) probabilities).

    Labels are the teacher's argmax. Where both argmaxes agree, confidence rises:
    1 - (1 - p_teacher) * (1 - agree_boost * p_feature); where they disagree it is 0, so the
    pixel is ignored after thresholding. Returns (labels uint8 HxW, confidence float32 HxW,
    {"agreement": fraction of agreeing pixels}).

    >>> t = np.array([[[0.2]], [[0.8]]], np.float32); f = np.array([[[0.4]], [[0.6]]], np.float32)
    >>> labels, conf, stats = combine(t, f)
    >>> int(labels[0, 0]), round(float(conf[0, 0]), 3), stats["agreement"]
    (1, 0.86, 1.0)
    """
    if teacher_probs.shape != feature_probs.shape or teacher_probs.ndim != 3:
        raise ValueError(
            f"teacher probabilities {teacher_probs.shape} and feature probabilities {feature_probs.shape} "
            "must both be (C, H, W) for the same image"
        )
    labels = teacher_probs.argmax(axis=0)
    p_teacher = np.take_along_axis(teacher_probs, labels[None], axis=0)[0]
    p_feature = np.take_along_axis(feature_probs, labels[None], axis=0)[0]
    agree = feature_probs.argmax(axis=0) == labels
    confidence = np.where(agree, 1.0 - (1.0 - p_teacher) * (1.0 - agree_boost * p_feature), 0.0)
    return labels.astype(np.uint8), confidence.astype(np.float32), {"agreement": float(agree.mean())}

