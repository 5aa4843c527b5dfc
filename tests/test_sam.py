import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from transformers import SamModel, SamProcessor

from ssl_seg import IGNORE_INDEX
from ssl_seg.models.hub import ModelLoadError
from ssl_seg.pseudo.sam import (
    SamRefiner,
    interior_point,
    prompts_from_labels,
    tiny_sam_config,
    vit_b_sam_config,
)
from ssl_seg.pseudo.refine import threshold_labels

# (top, left, size, class) of square particles in a 48x64 scene
BLOBS = [(4, 4, 12, 1), (4, 28, 12, 2), (24, 8, 12, 3), (24, 36, 12, 1), (30, 22, 8, 2), (8, 48, 10, 3)]


@pytest.fixture(scope="module")
def tiny_model() -> SamModel:
    torch.manual_seed(0)
    return SamModel(tiny_sam_config(image_size=64)).eval()


def blob_scene(upscale: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, teacher labels and confidence for flat square particles on a dark background."""
    labels = np.zeros((48, 64), np.uint8)
    image = np.full((48, 64, 3), 20, np.uint8)
    for top, left, size, class_id in BLOBS:
        labels[top : top + size, left : left + size] = class_id
        image[top : top + size, left : left + size] = 60 * class_id + 40
    labels = np.kron(labels, np.ones((upscale, upscale), np.uint8))
    image = np.kron(image, np.ones((upscale, upscale, 1), np.uint8))
    return image, labels, np.full(labels.shape, 0.9, np.float32)


class CallCounter:
    """Counts forward calls of a module through a forward hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._count)

    def _count(self, *_):
        self.calls += 1

    def remove(self):
        self.handle.remove()


def test_prompts_one_per_confident_component_largest_first():
    _, labels, confidence = blob_scene()
    labels[40:42, 60:62] = 3  # a 4-pixel speck: below min_area
    confidence[24:36, 36:48] = 0.5  # one particle unconfident: no prompt
    prompts = prompts_from_labels(labels, confidence, threshold=0.8, min_area=16)

    assert len(prompts) == len(BLOBS) - 1
    assert [p.area for p in prompts] == sorted((p.area for p in prompts), reverse=True)
    base = threshold_labels(labels, confidence, 0.8)
    for prompt in prompts:
        x, y = prompt.point
        assert base[int(y), int(x)] == prompt.class_id  # the point lies inside its component
        rows, cols = np.unravel_index(prompt.pixels, labels.shape)
        assert len(prompt.pixels) == prompt.area
        assert (base[rows, cols] == prompt.class_id).all()
        x0, y0, x1, y1 = prompt.box
        assert x0 <= cols.min() and y0 <= rows.min() and x1 >= cols.max() and y1 >= rows.max()
    assert len(prompts_from_labels(labels, confidence, min_area=16, max_prompts=2)) == 2


def ring(size: int, outer: float, inner: float) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size] - (size - 1) / 2
    radius = np.hypot(rows, cols)
    return (radius <= outer) & (radius >= inner)


@pytest.mark.parametrize(
    "component",
    [ring(40, 18, 0), ring(600, 290, 0), ring(600, 290, 240), ring(600, 290, 286), np.eye(700, dtype=bool),
     np.ones((3, 900), bool), np.random.default_rng(0).random((500, 700)) > 0.3],
    ids=["small-disc", "large-disc", "large-ring", "thin-large-ring", "diagonal-line", "thin-bar", "speckle"],
)
def test_interior_point_lies_inside_and_far_from_the_boundary(component):
    row, col = interior_point(component)
    assert component[row, col]
    distance = ndimage.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1]
    # large crops are measured on blocks: the point is within a block's width of the deepest one
    block = -(-max(component.shape) // 256)
    assert distance[row, col] >= distance.max() - 2 * block


def test_refine_returns_a_valid_map_and_stats(tiny_model):
    image, labels, confidence = blob_scene()
    refined, stats = SamRefiner(tiny_model).refine(image, labels, confidence, min_area=16)
    assert refined.shape == labels.shape and refined.dtype == np.uint8
    assert set(np.unique(refined)) <= {0, 1, 2, 3, IGNORE_INDEX}
    assert stats["prompts"] == len(BLOBS)
    assert 0 <= stats["accepted"] <= stats["prompts"]
    assert stats["changed_pixels"] == int((refined != threshold_labels(labels, confidence, 0.8)).sum())


@pytest.mark.parametrize("prompt_chunk", [4, 64])
def test_image_encoded_once_and_prompts_decoded_in_batches(tiny_model, prompt_chunk):
    image, labels, confidence = blob_scene()
    encoder, decoder = CallCounter(tiny_model.vision_encoder), CallCounter(tiny_model.mask_decoder)
    try:
        _, stats = SamRefiner(tiny_model, prompt_chunk=prompt_chunk).refine(image, labels, confidence, min_area=16)
    finally:
        encoder.remove()
        decoder.remove()
    assert encoder.calls == 1
    assert decoder.calls == math.ceil(len(BLOBS) / prompt_chunk) == stats["decoder_calls"]


def test_one_at_a_time_reference_runs_the_full_model_per_prompt(tiny_model):
    image, labels, confidence = blob_scene()
    encoder = CallCounter(tiny_model.vision_encoder)
    try:
        _, stats = SamRefiner(tiny_model).refine(image, labels, confidence, min_area=16, one_at_a_time=True)
    finally:
        encoder.remove()
    assert encoder.calls == stats["decoder_calls"] == len(BLOBS)


@pytest.mark.parametrize("upscale", [1, 2], ids=["no-resize", "resize"])
@pytest.mark.parametrize("multimask", [False, True])
def test_batched_masks_equal_one_at_a_time_masks(tiny_model, upscale, multimask):
    image, labels, confidence = blob_scene(upscale)
    refiner = SamRefiner(tiny_model, prompt_chunk=4, multimask=multimask)
    prompts = prompts_from_labels(labels, confidence, min_area=16)
    batched, batched_scores = refiner.mask_logits(image, prompts)
    naive, naive_scores = refiner.mask_logits(image, prompts, one_at_a_time=True)

    assert batched.shape == naive.shape == (len(prompts), *labels.shape)
    torch.testing.assert_close(batched_scores, naive_scores, rtol=1e-4, atol=1e-6)
    # The random tiny model's logits are ~1e-5: compare relative to their scale. The resize
    # path differs slightly (torch vs PIL bilinear), so only nearly all signs must match there.
    scale = naive.abs().max()
    if upscale == 1:
        torch.testing.assert_close(batched / scale, naive / scale, rtol=1e-4, atol=1e-4)
    assert ((batched > 0) == (naive > 0)).float().mean() > 0.995


def test_batched_refine_equals_one_at_a_time_refine(tiny_model):
    image, labels, confidence = blob_scene()
    refiner = SamRefiner(tiny_model, prompt_chunk=4)
    fast, fast_stats = refiner.refine(image, labels, confidence, min_area=16)
    slow, slow_stats = refiner.refine(image, labels, confidence, min_area=16, one_at_a_time=True)
    assert (fast == slow).mean() > 0.995
    assert fast_stats["accepted"] == slow_stats["accepted"]


def square_logits(shape, top, left, size):
    logits = torch.full(shape, -1.0)
    logits[top : top + size, left : left + size] = 1.0
    return logits


def painted(refiner, monkeypatch, labels, confidence, masks_and_scores):
    """Refine with SAM's masks replaced by hand-made (logits, score) pairs, one per prompt."""

    def fake_masks(image, prompts, stats):
        assert len(prompts) == len(masks_and_scores)
        stats["decoder_calls"] += 1
        logits = torch.stack([m for m, _ in masks_and_scores])
        scores = torch.tensor([s for _, s in masks_and_scores])
        yield 0, logits, scores

    monkeypatch.setattr(refiner, "_batched_masks", fake_masks)
    image = np.zeros((*labels.shape, 3), np.uint8)
    return refiner.refine(image, labels, confidence, min_area=16)


def test_accepted_mask_snaps_boundary_and_claims_unconfident_pixels(tiny_model, monkeypatch):
    labels = np.zeros((40, 40), np.uint8)
    labels[10:30, 10:30] = 2
    confidence = np.full(labels.shape, 0.9, np.float32)
    confidence[10:30, 28:30] = 0.5  # the teacher is unsure of the particle's right edge
    # SAM sees the particle one pixel smaller on top and two pixels wider on the right.
    mask = torch.full(labels.shape, -1.0)
    mask[11:30, 10:32] = 1.0
    refined, stats = painted(SamRefiner(tiny_model), monkeypatch, labels, confidence, [(mask, 0.9)])

    assert stats["accepted"] == 1
    assert (refined[11:30, 10:32] == 2).all()  # inside the mask, unconfident pixels included
    assert (refined[10, 10:28] == IGNORE_INDEX).all()  # component pixels SAM left out
    assert (refined[:10] == 0).all() and (refined[30:] == 0).all()
    expected_changes = 19 * 4 + 18  # (right edge: 19 rows x 4 cols) + (top row: 18 confident px)
    assert stats["changed_pixels"] == expected_changes


def test_mask_of_another_class_is_dropped(tiny_model, monkeypatch):
    labels = np.zeros((40, 40), np.uint8)
    labels[10:20, 10:20] = 1
    confidence = np.full(labels.shape, 0.9, np.float32)
    # SAM's mask spills over a large confident background area: mostly class 0, so dropped.
    refined, stats = painted(
        SamRefiner(tiny_model), monkeypatch, labels, confidence, [(square_logits(labels.shape, 0, 0, 40), 0.9)]
    )
    assert stats["accepted"] == 0
    np.testing.assert_array_equal(refined, labels)


def test_best_scoring_mask_wins_overlaps(tiny_model, monkeypatch):
    labels = np.zeros((40, 40), np.uint8)
    labels[5:20, 5:20] = 1
    labels[20:35, 20:35] = 3
    confidence = np.full(labels.shape, 0.9, np.float32)
    prompts = prompts_from_labels(labels, confidence, min_area=16)
    assert [p.class_id for p in prompts] == [1, 3]  # equal areas: class order
    overlap = (slice(17, 22), slice(17, 22))
    first = square_logits(labels.shape, 5, 5, 17)  # reaches into the second particle
    second = square_logits(labels.shape, 17, 17, 18)  # reaches into the first
    for first_score, second_score, winner in [(0.9, 0.5, 1), (0.5, 0.9, 3)]:
        refined, stats = painted(
            SamRefiner(tiny_model), monkeypatch, labels, confidence, [(first, first_score), (second, second_score)]
        )
        assert stats["accepted"] == 2
        assert (refined[overlap] == winner).all()


def test_refine_without_confident_particles_is_the_thresholded_teacher(tiny_model):
    image, labels, _ = blob_scene()
    confidence = np.full(labels.shape, 0.5, np.float32)
    confidence[:4] = 0.95
    refined, stats = SamRefiner(tiny_model).refine(image, labels, confidence)
    np.testing.assert_array_equal(refined, threshold_labels(labels, confidence, 0.8))
    assert stats == {"prompts": 0, "accepted": 0, "changed_pixels": 0, "decoder_calls": 0}


@pytest.mark.parametrize("with_processor", [False, True])
def test_loads_from_a_local_folder(tiny_model, tmp_path, with_processor):
    tiny_model.save_pretrained(tmp_path)
    if with_processor:
        SamRefiner(tiny_model)._reference_processor().save_pretrained(tmp_path)
    refiner = SamRefiner.from_pretrained(str(tmp_path), local_files_only=True)

    assert isinstance(refiner.processor, SamProcessor) == with_processor
    for name, tensor in tiny_model.state_dict().items():
        torch.testing.assert_close(refiner.model.state_dict()[name], tensor)
    image, labels, confidence = blob_scene()
    expected, _ = SamRefiner(tiny_model).refine(image, labels, confidence, min_area=16)
    refined, _ = refiner.refine(image, labels, confidence, min_area=16)
    np.testing.assert_array_equal(refined, expected)


@pytest.mark.parametrize("name", ["missing-folder", "nonexistent-org/nonexistent-sam"])
def test_missing_model_gives_one_clear_line(tmp_path, name):
    target = str(tmp_path / name) if name == "missing-folder" else name
    with pytest.raises(ModelLoadError) as error:
        SamRefiner.from_pretrained(target, local_files_only=True)
    message = str(error.value)
    assert "\n" not in message
    assert target in message
    assert "download" in message or "save_pretrained" in message


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        SamRefiner.from_pretrained(str(tmp_path), local_files_only=True)


def test_folder_of_another_model_is_refused(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8)).save_pretrained(tmp_path / "dinov2")
    with pytest.raises(ModelLoadError, match="not SAM"):
        SamRefiner.from_pretrained(str(tmp_path / "dinov2"), local_files_only=True)


def test_configs_have_the_documented_sizes():
    vit_b = vit_b_sam_config()
    assert vit_b.vision_config.hidden_size == 768
    assert vit_b.vision_config.num_hidden_layers == 12
    assert vit_b.vision_config.num_attention_heads == 12
    assert list(vit_b.vision_config.global_attn_indexes) == [2, 5, 8, 11]
    assert (vit_b.vision_config.image_size, vit_b.vision_config.patch_size) == (1024, 16)
    assert vit_b.prompt_encoder_config.image_embedding_size == 64
    tiny = tiny_sam_config(image_size=128)
    assert tiny.vision_config.image_size == tiny.prompt_encoder_config.image_size == 128
