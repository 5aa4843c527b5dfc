import numpy as np
import pytest
import torch
from transformers import Dinov2Model

from ssl_seg import IGNORE_INDEX, NUM_CLASSES
from ssl_seg.models.dinov2 import tiny_dinov2_config
from ssl_seg.models.hub import ModelLoadError
from ssl_seg.pseudo.features import Dinov2FeatureTeacher, combine, spherical_kmeans

COLOURS = np.array([[40, 40, 40], [240, 240, 240], [140, 140, 140], [90, 70, 20]], np.uint8)


@pytest.fixture(scope="module")
def tiny_model() -> Dinov2Model:
    torch.manual_seed(0)
    return Dinov2Model(tiny_dinov2_config()).eval()


def colour_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 96x128 image whose classes differ strongly in colour (slight noise), and its mask."""
    mask = np.zeros((96, 128), np.uint8)
    mask[10:50, 10:60] = 1
    mask[50:90, 60:120] = 2
    mask[5:40, 80:125] = 3
    noise = np.random.default_rng(seed).integers(0, 10, (*mask.shape, 3)).astype(np.uint8)
    return COLOURS[mask] + noise, mask


@pytest.mark.parametrize(("height", "width", "grid"), [(96, 128, (8, 11)), (128, 96, (11, 8)), (64, 64, (8, 8))])
def test_features_are_unit_norm_on_the_patch_grid(tiny_model, height, width, grid):
    teacher = Dinov2FeatureTeacher(tiny_model, resolution=64)
    features = teacher.features(np.zeros((height, width, 3), np.uint8))
    assert features.shape == (tiny_model.config.hidden_size, *grid)
    torch.testing.assert_close(features.norm(dim=0), torch.ones(grid))


def test_grid_of_a_full_size_image_at_the_default_resolution(tiny_model):
    teacher = Dinov2FeatureTeacher(tiny_model)  # resolution 448
    teacher.patch_size = 14  # dinov2-small/base/large patch size
    assert teacher.grid_shape(1024, 1360) == (32, 42)


def test_register_tokens_are_dropped():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(**tiny_dinov2_config().to_dict() | {"num_register_tokens": 4})
    teacher = Dinov2FeatureTeacher(Dinov2WithRegistersModel(config), resolution=64)
    assert teacher.prefix_tokens == 5
    assert teacher.features(np.zeros((64, 96, 3), np.uint8)).shape == (config.hidden_size, 8, 12)


@pytest.mark.parametrize("prototypes_per_class", [1, 3])
def test_fit_and_predict_proba_shapes_and_normalisation(tiny_model, prototypes_per_class):
    image, mask = colour_scene()
    teacher = Dinov2FeatureTeacher(tiny_model, resolution=64, prototypes_per_class=prototypes_per_class)
    probs = teacher.fit([(image, mask)]).predict_proba(image)

    assert teacher.prototypes.shape == (NUM_CLASSES * prototypes_per_class, tiny_model.config.hidden_size)
    assert probs.shape == (NUM_CLASSES, *mask.shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert probs.min() >= 0.0


def test_fitted_teacher_separates_classes_of_distinct_colour(tiny_model):
    image, mask = colour_scene(seed=0)
    teacher = Dinov2FeatureTeacher(tiny_model, resolution=64).fit([(image, mask)])
    other_image, _ = colour_scene(seed=1)  # same layout, fresh noise
    predicted = teacher.predict_proba(other_image).argmax(axis=0)

    # Majority-class guess scores ~0.51; patch-level features lose some pixels at edges.
    assert (predicted == mask).mean() > 0.7
    for class_id in range(NUM_CLASSES):
        assert (predicted[mask == class_id] == class_id).mean() > 0.5


def test_unseen_classes_get_no_probability(tiny_model):
    image, mask = colour_scene()
    mask = np.where(mask == 3, IGNORE_INDEX, mask).astype(np.uint8)  # liptinite unlabeled
    teacher = Dinov2FeatureTeacher(tiny_model, resolution=64).fit([(image, mask)])
    assert 3 not in teacher.prototype_classes.tolist()
    assert teacher.predict_proba(image)[3].max() == 0.0


def test_mixed_and_ignored_patches_do_not_vote(tiny_model):
    teacher = Dinov2FeatureTeacher(tiny_model, resolution=64)
    mask = np.full((64, 64), IGNORE_INDEX, np.uint8)
    mask[:8, :8] = 1  # exactly one patch
    mask[8:16, :4] = 2  # half a patch, the rest ignored
    patch_classes = teacher._pure_patch_classes(mask, (8, 8))
    assert patch_classes[0] == 1
    assert (patch_classes[1:] == -1).all()
    with pytest.raises(ValueError, match="no pure patch"):
        teacher.fit([(np.zeros((64, 64, 3), np.uint8), np.full((64, 64), IGNORE_INDEX, np.uint8))])


def test_predict_before_fit_and_mismatched_mask_are_refused(tiny_model):
    teacher = Dinov2FeatureTeacher(tiny_model, resolution=64)
    with pytest.raises(ValueError, match="call fit"):
        teacher.predict_proba(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="mask shape"):
        teacher.fit([(np.zeros((64, 64, 3), np.uint8), np.zeros((32, 64), np.uint8))])


def test_state_dict_round_trip_through_torch_save(tiny_model, tmp_path):
    image, mask = colour_scene()
    fitted = Dinov2FeatureTeacher(tiny_model, resolution=64, temperature=0.1).fit([(image, mask)])
    torch.save(fitted.state_dict(), tmp_path / "prototypes.pt")

    restored = Dinov2FeatureTeacher(tiny_model)
    restored.load_state_dict(torch.load(tmp_path / "prototypes.pt"))
    assert (restored.resolution, restored.temperature) == (64, 0.1)
    np.testing.assert_allclose(restored.predict_proba(image), fitted.predict_proba(image), atol=1e-6)

    wider_config = tiny_dinov2_config()
    wider_config.hidden_size = 2 * wider_config.hidden_size
    with pytest.raises(ValueError, match="same DINOv2 model"):
        Dinov2FeatureTeacher(Dinov2Model(wider_config)).load_state_dict(fitted.state_dict())


def test_loads_from_a_local_folder(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    teacher = Dinov2FeatureTeacher.from_pretrained(str(tmp_path), local_files_only=True, resolution=64)
    image, _ = colour_scene()
    expected = Dinov2FeatureTeacher(tiny_model, resolution=64).features(image)
    torch.testing.assert_close(teacher.features(image), expected)


@pytest.mark.parametrize("name", ["missing-folder", "nonexistent-org/nonexistent-dinov2"])
def test_missing_model_gives_one_clear_line(tmp_path, name):
    target = str(tmp_path / name) if name == "missing-folder" else name
    with pytest.raises(ModelLoadError) as error:
        Dinov2FeatureTeacher.from_pretrained(target, local_files_only=True)
    assert "\n" not in str(error.value) and target in str(error.value)


def test_combine_raises_agreeing_confidence_and_zeroes_disagreement():
    teacher = np.array([[0.1, 0.1], [0.7, 0.2], [0.1, 0.6], [0.1, 0.1]], np.float32).reshape(4, 1, 2)
    feature = np.array([[0.0, 0.0], [0.8, 0.9], [0.2, 0.1], [0.0, 0.0]], np.float32).reshape(4, 1, 2)
    labels, confidence, stats = combine(teacher, feature, agree_boost=0.5)

    np.testing.assert_array_equal(labels, [[1, 2]])  # always the segmentation teacher's argmax
    assert confidence[0, 0] == pytest.approx(1 - 0.3 * (1 - 0.5 * 0.8))
    assert confidence[0, 0] > 0.7  # agreement raises confidence above the teacher's own
    assert confidence[0, 1] == 0.0  # the feature teacher says class 1: disagreement
    assert stats["agreement"] == 0.5
    assert labels.dtype == np.uint8 and confidence.dtype == np.float32


def test_combine_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same image"):
        combine(np.zeros((4, 2, 2), np.float32), np.zeros((4, 2, 3), np.float32))


def test_spherical_kmeans_finds_separated_directions():
    generator = torch.Generator().manual_seed(0)
    directions = torch.eye(3)
    noise = 0.05 * torch.randn(60, 3, generator=generator)
    points = torch.nn.functional.normalize(directions.repeat_interleave(20, 0) + noise, dim=1)
    centres = spherical_kmeans(points, 3, generator=generator)
    assert centres.shape == (3, 3)
    # every true direction has a centre within ~10 degrees
    assert ((directions @ centres.T).max(dim=1).values > 0.98).all()
