"""SAM refinement of teacher pseudo-labels, with batched prompts.

Each confident connected component of a maceral class in the teacher map becomes one SAM
prompt (its box plus one point inside it). SAM's masks follow the particle's real edges; a mask
takes the class of the teacher pixels it covers when they agree, and wins the pixels it covers.

Fast path: the image is embedded once, then all prompts go through the prompt decoder in
chunks (`prompt_chunk` prompts per call), with preprocessing and postprocessing in torch on the
model's device. `refine(..., one_at_a_time=True)` is the naive reference (processor + full model per
prompt) kept for benchmarks and equivalence tests.

Example (tiny random model, as in the tests):
    >>> import numpy as np
    >>> from transformers import SamModel
    >>> refiner = SamRefiner(SamModel(tiny_sam_config()))
    >>> image = np.zeros((64, 64, 3), np.uint8); image[16:48, 16:48] = 200
    >>> labels = np.zeros((64, 64), np.uint8); labels[16:48, 16:48] = 2
    >>> refined, stats = refiner.refine(image, labels, np.ones((64, 64), np.float32))
    >>> refined.shape, stats["prompts"], stats["decoder_calls"]
    ((64, 64), 1, 1)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.measure import block_reduce
from skimage.measure import label as connected_components
from skimage.measure import regionprops

from ssl_seg import IGNORE_INDEX, NUM_CLASSES
from ssl_seg.models.hub import load_pretrained
from ssl_seg.pseudo.refine import as_rgb, check_teacher_maps, threshold_labels

# SAM normalises with the ImageNet statistics (SamImageProcessor defaults).
SAM_MEAN = (0.485, 0.456, 0.406)
SAM_STD = (0.229, 0.224, 0.225)
MACERAL_CLASSES = tuple(range(1, NUM_CLASSES))
# (index of the first prompt, mask logits (m, H, W), predicted IoU scores (m,))
MaskChunk = tuple[int, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Prompt:
    """One SAM prompt built from a confident teacher component (coordinates in image pixels)."""

    class_id: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (inclusive pixel corners)
    point: tuple[float, float]  # x, y of the component pixel farthest from its boundary
    area: int
    # Flat indices (row * W + col) of the component's pixels: snapped out where SAM disagrees.
    pixels: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.empty(0, np.int64))


def prompts_from_labels(
    labels: np.ndarray,
    confidence: np.ndarray,
    threshold: float = 0.8,
    min_area: int = 64,
    max_prompts: int = 256,
    classes: Sequence[int] = MACERAL_CLASSES,
    box_margin: float = 0.05,
) -> list[Prompt]:
    """One box + one positive point per confident connected component (area >= min_area).

    Components come from `skimage.measure.label` (8-connectivity) on each class's confident
    pixels; the point is the pixel farthest from the component's boundary (`interior_point`), so
    it lies inside even for rings and crescents. Background (class 0) gets no prompts.
    The largest `max_prompts` components are kept, largest first.
    """
    base = threshold_labels(labels, confidence, threshold)
    height, width = base.shape
    candidates = []  # (class, region) of every large-enough component
    for class_id in classes:
        mask = base == class_id
        if int(mask.sum()) >= min_area:
            regions = regionprops(connected_components(mask, connectivity=2))
            candidates += [(int(class_id), r) for r in regions if r.area >= min_area]
    candidates.sort(key=lambda item: item[1].area, reverse=True)  # stable: ties keep class order

    prompts: list[Prompt] = []
    for class_id, region in candidates[:max_prompts]:
        top, left, bottom, right = region.bbox  # bottom/right exclusive
        peak_row, peak_col = interior_point(region.image)
        margin = max(2, round(box_margin * max(bottom - top, right - left)))
        box = (
            float(max(0, left - margin)),
            float(max(0, top - margin)),
            float(min(width - 1, right - 1 + margin)),
            float(min(height - 1, bottom - 1 + margin)),
        )
        pixels, cols = np.nonzero(region.image)
        pixels += top  # flat indices built in place: a whole-image component has a million pixels
        pixels *= width
        pixels += cols
        pixels += left
        prompts.append(
            Prompt(
                class_id=class_id,
                box=box,
                point=(float(left + peak_col), float(top + peak_row)),
                area=int(region.area),
                pixels=pixels.astype(np.int64, copy=False),
            )
        )
    return prompts


def interior_point(component: np.ndarray, max_side: int = 256) -> tuple[int, int]:
    """(row, col) of a pixel of ``component`` (a boolean crop) farthest from its boundary.

    The crop's edge counts as boundary (it may be the image's). A crop longer than ``max_side``
    is first shrunk by keeping only blocks that lie wholly inside: the distance transform of an
    image-sized component then costs about a tenth, and the point, a block's centre pixel, still
    lies inside. Components too thin for any whole block are measured in full.
    """
    grid, factor = component, -(-max(component.shape) // max_side)
    if factor > 1:
        blocks = block_reduce(component, (factor, factor), np.all, cval=False)
        grid, factor = (blocks, factor) if blocks.any() else (component, 1)
    distance = ndimage.distance_transform_edt(np.pad(grid, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(distance.argmax()), distance.shape)
    return int(row) * factor + factor // 2, int(col) * factor + factor // 2


def resized_shape(height: int, width: int, longest_side: int) -> tuple[int, int]:
    """Shape after resizing the longest side to `longest_side` (SamImageProcessor's rounding)."""
    scale = longest_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class _MaskPainter:
    """Accumulates SAM masks chunk by chunk into a refined label map, on the model's device.

    Painting all accepted masks in order of increasing score equals keeping, per pixel, the
    class of the highest-scoring accepted mask that covers it: that is what is stored, so no
    full-resolution mask outlives its chunk.
    """

    def __init__(self, base: np.ndarray, prompts: Sequence[Prompt], min_agreement: float, device: torch.device):
        self.shape = base.shape
        self.min_agreement = min_agreement
        self.base = torch.from_numpy(base.ravel().astype(np.int64)).to(device)
        confident = self.base != IGNORE_INDEX
        self.votes_table = F.one_hot(torch.where(confident, self.base, 0), NUM_CLASSES).float()
        self.votes_table *= confident[:, None]
        component_of = np.full(base.size, -1, np.int64)
        for index, prompt in enumerate(prompts):
            component_of[prompt.pixels] = index
        self.component_of = torch.from_numpy(component_of).to(device)
        self.prompt_class = torch.tensor([p.class_id for p in prompts], dtype=torch.int64, device=device)
        self.best_score = torch.full((base.size,), -math.inf, device=device)
        self.best_class = torch.zeros(base.size, dtype=torch.int64, device=device)
        self.outside_own_mask = torch.zeros(base.size, dtype=torch.bool, device=device)
        self.accepted = 0

    def add(self, start: int, masks: torch.Tensor, scores: torch.Tensor) -> None:
        """Add binary masks (m, H*W) of prompts start..start+m-1 with their scores (m,)."""
        with torch.autocast(masks.device.type, enabled=False):  # bf16 would round the pixel counts
            self._add(start, masks, scores)

    def _add(self, start: int, masks: torch.Tensor, scores: torch.Tensor) -> None:
        count = masks.shape[0]
        votes = masks.float() @ self.votes_table  # (m, C) confident teacher pixels per class
        voters = votes.sum(dim=1)
        prompt_class = self.prompt_class[start : start + count]
        share = votes.gather(1, prompt_class[:, None])[:, 0] / voters.clamp(min=1)
        # A mask must be mostly the prompt's class: else SAM segmented something else.
        accepted = (voters > 0) & (votes.argmax(dim=1) == prompt_class) & (share >= self.min_agreement)
        if not bool(accepted.any()):
            return
        self.accepted += int(accepted.sum())
        kept_masks, kept_scores = masks[accepted], scores[accepted].float()
        candidate = torch.where(kept_masks, kept_scores[:, None], torch.tensor(-math.inf, device=masks.device))
        top_score, top_index = candidate.max(dim=0)
        better = top_score > self.best_score
        self.best_score = torch.where(better, top_score, self.best_score)
        self.best_class = torch.where(better, prompt_class[accepted][top_index], self.best_class)
        # Component pixels outside their own accepted SAM mask lose their teacher label.
        in_chunk = (self.component_of >= start) & (self.component_of < start + count)
        pixel = in_chunk.nonzero()[:, 0]
        local = self.component_of[pixel] - start
        keep = accepted[local]
        pixel, local = pixel[keep], local[keep]
        self.outside_own_mask[pixel[~masks[local, pixel]]] = True

    def result(self) -> np.ndarray:
        refined = self.base.clone()
        refined[self.outside_own_mask] = IGNORE_INDEX
        covered = torch.isfinite(self.best_score)
        refined[covered] = self.best_class[covered]
        return refined.to(torch.uint8).cpu().numpy().reshape(self.shape)


class SamRefiner:
    """Refine teacher pseudo-labels with a `transformers.SamModel` (hub id, local folder or in memory).

    `prompt_chunk` prompts go through the decoder per call; `post_chunk` masks are upsampled to
    full resolution at a time (bounds memory: 16 masks of 1024x1360 floats ~ 90 MB).
    `multimask=True` asks for SAM's 3 masks per prompt and keeps the one with the best
    predicted IoU; the default single mask is SAM's recommendation for box prompts.
    """

    def __init__(
        self,
        model,
        processor=None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        prompt_chunk: int = 64,
        post_chunk: int = 16,
        multimask: bool = False,
    ):
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.dtype = next(self.model.parameters()).dtype
        self.processor = processor
        self.prompt_chunk = int(prompt_chunk)
        self.post_chunk = int(post_chunk)
        self.multimask = bool(multimask)
        self.image_size = int(model.config.vision_config.image_size)
        image_processor = getattr(processor, "image_processor", None)
        mean = getattr(image_processor, "image_mean", None) or SAM_MEAN
        std = getattr(image_processor, "image_std", None) or SAM_STD
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255.0

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str,
        *,
        local_files_only: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> SamRefiner:
        """Load SamModel (and SamProcessor when present) from a hub id or a folder from save_pretrained.

        A missing model raises `ssl_seg.models.hub.ModelLoadError` with a one-line fix.
        """
        from transformers import SamModel, SamProcessor

        model = load_pretrained(SamModel, name_or_dir, local_files_only=local_files_only, family="SAM")
        local = Path(name_or_dir).expanduser()
        try:  # the fast path needs no processor; the naive reference builds one when absent
            processor = SamProcessor.from_pretrained(
                str(local) if local.is_dir() else name_or_dir, local_files_only=local_files_only
            )
        except (OSError, ValueError, TypeError):
            processor = None
        return cls(model, processor=processor, device=device, dtype=dtype, **kwargs)

    # ---- fast path -------------------------------------------------------------------------

    def _autocast(self):
        if self.device.type == "cuda" and self.dtype == torch.float32:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pixel values (1, 3, S, S) on the device and the resized (h, w) before padding.

        Same steps as SamImageProcessor (resize longest side to S, rescale, normalise, pad
        bottom/right with zeros), done in torch on the device.
        """
        image = as_rgb(image)
        height, width = image.shape[:2]
        new_h, new_w = resized_shape(height, width, self.image_size)
        pixels = torch.from_numpy(np.array(image)).to(self.device).permute(2, 0, 1)[None].float()
        if (new_h, new_w) != (height, width):
            pixels = F.interpolate(pixels, (new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
            pixels = pixels.round().clamp(0, 255)  # the processor resizes uint8 images
        pixels = (pixels - self.mean) / self.std
        pixels = F.pad(pixels, (0, self.image_size - new_w, 0, self.image_size - new_h))
        return pixels.to(self.dtype), (new_h, new_w)

    def _upsample(self, low_res: torch.Tensor, resized: tuple[int, int], original: tuple[int, int]) -> torch.Tensor:
        """Low-res mask logits (m, h, w) to original-size logits (m, H, W), as post_process_masks does."""
        padded = (self.image_size, self.image_size)
        masks = F.interpolate(low_res[:, None].float(), padded, mode="bilinear", align_corners=False)
        masks = masks[..., : resized[0], : resized[1]]
        return F.interpolate(masks, original, mode="bilinear", align_corners=False)[:, 0]

    def _best_of(self, pred_masks: torch.Tensor, iou_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, k, h, w) masks and (m, k) scores -> the best-scoring mask per prompt."""
        scores, best = iou_scores.float().max(dim=1)
        return pred_masks[torch.arange(pred_masks.shape[0], device=pred_masks.device), best], scores

    def _batched_masks(self, image: np.ndarray, prompts: Sequence[Prompt], stats: dict) -> Iterator[MaskChunk]:
        """Yield (start, logits (m, H, W), scores (m,)): one encoder call, ceil(n/prompt_chunk) decoder calls."""
        height, width = image.shape[:2]
        pixel_values, resized = self.preprocess(image)
        embeddings = self.model.get_image_embeddings(pixel_values)
        scale = torch.tensor([resized[1] / width, resized[0] / height], device=self.device)
        for start in range(0, len(prompts), self.prompt_chunk):
            chunk = prompts[start : start + self.prompt_chunk]
            boxes = torch.tensor([p.box for p in chunk], device=self.device).view(1, -1, 2, 2) * scale
            points = torch.tensor([p.point for p in chunk], device=self.device).view(1, -1, 1, 2) * scale
            # prompt and mask decoding stay out of bf16 autocast: the prompt encoder's Fourier features
            # of pixel coordinates would lose several pixels of position; the decoder is cheap
            with torch.autocast(self.device.type, enabled=False):
                outputs = self.model(
                    image_embeddings=embeddings.to(self.dtype),
                    input_points=points,
                    input_labels=torch.ones(1, len(chunk), 1, dtype=torch.int64, device=self.device),
                    input_boxes=boxes.view(1, -1, 4),
                    multimask_output=self.multimask,
                )
            stats["decoder_calls"] += 1
            low_res, scores = self._best_of(outputs.pred_masks[0], outputs.iou_scores[0])
            for offset in range(0, len(chunk), self.post_chunk):
                part = slice(offset, offset + self.post_chunk)
                yield start + offset, self._upsample(low_res[part], resized, (height, width)), scores[part]

    # ---- naive reference --------------------------------------------------------------------

    def _reference_processor(self):
        """The model's SamProcessor, or one built from the config (tiny random models have none)."""
        if self.processor is None:
            from transformers import SamProcessor

            try:
                import torchvision  # noqa: F401  (transformers' default SAM image processor needs it)

                from transformers import SamImageProcessor as ImageProcessor
            except ImportError:
                try:
                    from transformers import SamImageProcessorPil as ImageProcessor
                except ImportError:  # transformers < 5: the only SAM image processor is numpy-based
                    from transformers import SamImageProcessor as ImageProcessor
            size = self.image_size
            image_processor = ImageProcessor(
                size={"longest_edge": size},
                pad_size={"height": size, "width": size},
                mask_size={"longest_edge": size // 4},
                mask_pad_size={"height": size // 4, "width": size // 4},
            )
            self.processor = SamProcessor(image_processor=image_processor)
        return self.processor

    def _one_at_a_time_masks(self, image: np.ndarray, prompts: Sequence[Prompt], stats: dict) -> Iterator[MaskChunk]:
        """Yield (index, logits (1, H, W), score (1,)): processor + full model (encoder included) per prompt."""
        processor = self._reference_processor()
        image = as_rgb(image)
        for index, prompt in enumerate(prompts):
            inputs = processor(
                images=image,
                input_boxes=[[list(prompt.box)]],
                input_points=[[[list(prompt.point)]]],
                input_labels=[[[1]]],
                return_tensors="pt",
            )
            outputs = self.model(
                pixel_values=inputs["pixel_values"].to(self.device, self.dtype),
                input_points=inputs["input_points"].to(self.device, torch.float32),
                input_labels=inputs["input_labels"].to(self.device),
                input_boxes=inputs["input_boxes"].to(self.device, torch.float32),
                multimask_output=self.multimask,
            )
            stats["decoder_calls"] += 1
            masks = processor.post_process_masks(
                outputs.pred_masks.float().cpu(),
                inputs["original_sizes"],
                inputs["reshaped_input_sizes"],
                binarize=False,
            )[0][0]  # (k, H, W) for the one prompt
            best = int(outputs.iou_scores[0, 0].float().argmax())
            yield index, masks[best : best + 1].to(self.device), outputs.iou_scores[0, 0, best : best + 1].float()

    # ---- public API -------------------------------------------------------------------------

    def mask_logits(
        self, image: np.ndarray, prompts: Sequence[Prompt], one_at_a_time: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All prompts' mask logits (n, H, W) at image size and their scores (n,), on the CPU.

        Holds every mask in memory: meant for small images and tests; `refine` streams instead.
        """
        stats = {"decoder_calls": 0}
        produce = self._one_at_a_time_masks if one_at_a_time else self._batched_masks
        logits, scores = [], []
        with torch.inference_mode(), self._autocast():
            for _, chunk_logits, chunk_scores in produce(image, prompts, stats):
                logits.append(chunk_logits.float().cpu())
                scores.append(chunk_scores.float().cpu())
        height, width = image.shape[:2]
        if not logits:
            return torch.empty(0, height, width), torch.empty(0)
        return torch.cat(logits), torch.cat(scores)

    def refine(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        confidence: np.ndarray,
        threshold: float = 0.8,
        min_agreement: float = 0.6,
        min_area: int = 64,
        max_prompts: int = 256,
        *,
        one_at_a_time: bool = False,
    ) -> tuple[np.ndarray, dict]:
        """Refine a teacher map with SAM masks (one image embedding, batched prompt decoding).

        Returns (refined uint8 HxW with 0..3 / 255, stats with `prompts`, `accepted`,
        `changed_pixels`, `decoder_calls`). Pixels inside an accepted mask take its class (the
        best-scoring mask wins overlaps); pixels of a prompted component outside its accepted
        mask become IGNORE_INDEX; the rest keep the thresholded teacher label.
        ``one_at_a_time=True`` computes the same naively (processor + full model per prompt): a
        benchmark baseline only.
        """
        image = as_rgb(image)
        check_teacher_maps(labels, confidence, image)
        base = threshold_labels(labels, confidence, threshold)
        prompts = prompts_from_labels(labels, confidence, threshold, min_area=min_area, max_prompts=max_prompts)
        stats = {"prompts": len(prompts), "accepted": 0, "changed_pixels": 0, "decoder_calls": 0}
        if not prompts:
            return base, stats
        produce = self._one_at_a_time_masks if one_at_a_time else self._batched_masks
        with torch.inference_mode(), self._autocast():
            painter = _MaskPainter(base, prompts, min_agreement, self.device)
            for start, logits, scores in produce(image, prompts, stats):
                painter.add(start, (logits > 0).flatten(1), scores)
            refined = painter.result()
        stats["accepted"] = painter.accepted
        stats["changed_pixels"] = int((refined != base).sum())
        return refined, stats


def tiny_sam_config(image_size: int = 64):
    """A tiny random-weight SAM config (transformers' SamModelTester sizes) for tests and demos."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    patch_size = 4
    vision = SamVisionConfig(
        hidden_size=32,
        output_channels=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        window_size=8,
        global_attn_indexes=[1],
        num_pos_feats=16,
        mlp_dim=64,
        initializer_range=0.02,  # SAM's default 1e-10 gives an encoder that ignores the image
    )
    prompt_encoder = SamPromptEncoderConfig(
        hidden_size=32, image_size=image_size, patch_size=patch_size, mask_input_channels=4
    )
    mask_decoder = SamMaskDecoderConfig(
        hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=4, iou_head_hidden_dim=32
    )
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt_encoder, mask_decoder_config=mask_decoder)


def vit_b_sam_config():
    """SAM ViT-B sizes (facebook/sam-vit-base): random weights are fine for throughput benchmarks."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(
        hidden_size=768,
        output_channels=256,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=1024,
        patch_size=16,
        window_size=14,
        global_attn_indexes=[2, 5, 8, 11],
        num_pos_feats=128,
    )
    prompt_encoder = SamPromptEncoderConfig(
        hidden_size=256, image_size=1024, patch_size=16, mask_input_channels=16
    )
    mask_decoder = SamMaskDecoderConfig(hidden_size=256, mlp_dim=2048, num_hidden_layers=2, num_attention_heads=8)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt_encoder, mask_decoder_config=mask_decoder)
