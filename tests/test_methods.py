"""Semi-supervised methods: each trains end to end on a tiny run and logs what shows its health."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ssl_seg.config import TrainConfig, check_config, load_config
from ssl_seg.data.synthetic import write_dataset
from ssl_seg.models import build_model
from ssl_seg.train.loop import train
from ssl_seg.train.methods import METHODS
from ssl_seg.train.losses import pixel_weighted_loss
from ssl_seg.train.methods.base import StepContext, StepTimer, class_mask_ratios, confident_pixels
from ssl_seg.train.methods.unimatch import FeaturePerturbed

TINY = {"steps": 4, "batch_size": 4, "tile_size": 64, "val_every": 2, "log_every": 1, "warmup_steps": 1,
        "num_workers": 0, "lr": 2e-3, "labeled_ratio": 0.5}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_dataset(root, labeled=4, unlabeled=4, test=0, size=(72, 96), seed=5, progress=False, unlabeled_truth=True)
    return root


def scalars(run) -> set:
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_every_method_name_is_a_config_choice():
    for name in METHODS:
        check_config(TrainConfig(method=name))
    with pytest.raises(ValueError, match="method"):
        check_config(TrainConfig(method="fixmatch"))


@pytest.mark.parametrize("model", ["unet-small", "segformer-tiny"])
def test_unimatch_trains_and_logs_its_losses_and_class_mask_ratios(dataset, tmp_path, model):
    cfg = load_config(None, {**TINY, "method": "unimatch", "model": model, "rampup_fraction": 0.5,
                             "consistency_threshold": 0.0})
    summary = train(cfg, dataset, tmp_path / "run", mode="pretrain", progress=False)
    assert 0.0 <= summary["micro_jaccard_macerals"] <= 1.0
    tags = scalars(tmp_path / "run")
    assert {"train/loss_x", "train/loss_u_strong", "train/loss_u_fp", "train/mask_ratio",
            "train/mask_ratio_liptinite", "train/pseudo_jaccard", "time/teacher_s_per_step",
            "eval/micro_jaccard_macerals"} <= tags
    state = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert state["config"]["method"] == "unimatch" and state["step"] == 4


@pytest.mark.parametrize("method, stop_after, aligned", [("unimatch", 1, "none"), ("copy_paste", 1, "none"),
                                                         ("copy_paste", 2, "mean"), ("unimatch", 2, "kept")])
def test_online_methods_resume_exactly(dataset, tmp_path, method, stop_after, aligned):
    """copy_paste stops after its labeled-only warm-up (1 of 4 steps) and resumes into the teacher's phase;
    with distribution alignment it stops inside that phase, so the running class shares must resume too."""
    cfg = load_config(None, {**TINY, "method": method, "model": "unet-small", "copy_paste_warmup": 0.25,
                             "distribution_alignment": aligned})
    train(cfg, dataset, tmp_path / "full", mode="pretrain", progress=False)
    train(cfg, dataset, tmp_path / "split", mode="pretrain", progress=False, stop_after=stop_after)
    train(cfg, dataset, tmp_path / "split", mode="pretrain", progress=False, resume=True)
    full, split = (torch.load(tmp_path / run / "latest.pth", weights_only=True) for run in ("full", "split"))
    for key in full["model"]:
        torch.testing.assert_close(full["model"][key], split["model"][key])
    assert ("alignment" in full["method"]) == (aligned != "none")
    for key, value in full["method"].get("alignment", {}).items():
        torch.testing.assert_close(value, split["method"]["alignment"][key])


def test_distribution_alignment_lifts_a_class_the_teacher_under_predicts_to_its_labeled_share():
    from ssl_seg.train.methods.base import DistributionAlignment

    torch.manual_seed(0)
    prior = torch.tensor([0.7, 0.1, 0.1, 0.1])
    logits = torch.randn(2, 4, 16, 16)
    logits[:, 3] -= 3.0  # the teacher almost never predicts liptinite
    inside = torch.ones(2, 16, 16)
    before = (logits.softmax(dim=1).argmax(dim=1) == 3).float().mean()
    align = DistributionAlignment(prior, momentum=0.0)
    aligned = align(logits.softmax(dim=1), inside)
    torch.testing.assert_close(aligned.sum(dim=1), torch.ones(2, 16, 16))
    # its mean probability is lifted toward its labeled share, and with it the pixels it wins
    assert aligned[:, 3].mean() > 2 * logits.softmax(dim=1)[:, 3].mean()
    assert (aligned.argmax(dim=1) == 3).float().mean() > 3 * before
    slow = DistributionAlignment(prior, momentum=0.9)
    for _ in range(200):  # with momentum the running shares converge to the teacher's own
        slow(logits.softmax(dim=1), inside)
    torch.testing.assert_close(slow.running, logits.softmax(dim=1).mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    padded = inside.clone()
    padded[:, :, 8:] = 0  # padding the geometry brought in counts in no share
    probs = logits.softmax(dim=1)
    align(probs, padded)
    torch.testing.assert_close(align.running, probs[..., :8].mean(dim=(0, 2, 3)))


def test_feature_perturbation_sits_between_encoder_and_decoder():
    torch.manual_seed(0)
    model = build_model("unet-small").eval()
    net = FeaturePerturbed(model, p=0.5)
    net.dropout.train()  # batch norm on running statistics: the clean part must equal the plain forward
    x = torch.rand(3, 3, 32, 32)
    clean, perturbed = net(x, n_perturbed=2)
    assert clean.shape == (3, 4, 32, 32) and perturbed.shape == (2, 4, 32, 32)
    torch.testing.assert_close(clean, model(x))  # the unperturbed part is the plain forward
    assert not torch.allclose(perturbed, clean[1:])  # dropout of features changes the last two


def test_pixel_weighted_loss_weighs_a_rare_class_as_much_as_background():
    """Dice over the classes present: a liptinite pixel wrong costs more than one of 99 background pixels."""
    label = torch.zeros(1, 10, 10, dtype=torch.long)
    label[0, 0, 0] = 3
    logits = torch.zeros(1, 4, 10, 10)
    logits[:, 0] = 5.0  # background everywhere: the liptinite pixel is wrong
    keep, weights = torch.ones(1, 10, 10), torch.ones(4)
    wrong = pixel_weighted_loss(logits, label, keep, weights, dice_weight=1.0)
    logits[0, 3, 0, 0] = 10.0
    right = pixel_weighted_loss(logits, label, keep, weights, dice_weight=1.0)
    assert wrong - right > 0.4  # half the Dice term (two classes present) follows the one pixel
    assert pixel_weighted_loss(logits, label, torch.zeros_like(keep), weights, 1.0) == 0  # nothing kept: nothing learned


def test_class_balance_keeps_a_share_of_every_predicted_class_below_the_threshold():
    confidence = torch.rand(2, 16, 16) * 0.8  # nothing reaches the threshold
    label = torch.randint(0, 4, (2, 16, 16))
    assert confident_pixels(confidence, label, 0.9).sum() == 0
    keep = confident_pixels(confidence, label, 0.9, class_balance=0.25)
    for c in range(4):
        share = keep[label == c].mean().item()
        assert 0.2 <= share <= 0.3, (c, share)
    with pytest.raises(ValueError, match="consistency_class_balance"):
        check_config(TrainConfig(consistency_class_balance=1.5))


def test_teacher_mean_thresholds_follow_the_teacher_up_to_the_fixed_one():
    torch.manual_seed(0)
    label = torch.randint(0, 4, (2, 16, 16))
    sure = label == 0
    confidence = torch.where(sure, 0.85 + 0.15 * torch.rand(2, 16, 16), 0.5 * torch.rand(2, 16, 16))
    keep = confident_pixels(confidence, label, 0.9, class_thresholds="teacher_mean")
    assert torch.equal(keep[sure] > 0, confidence[sure] >= 0.9)  # its mean (0.925) is capped at 0.9
    for c in (1, 2, 3):  # each unsure class keeps its pixels above its own mean confidence, about half
        of_class = label == c
        assert torch.equal(keep[of_class] > 0, confidence[of_class] >= confidence[of_class].mean())
        assert 0.3 <= keep[of_class].mean() <= 0.7
    padded = torch.ones(2, 16, 16)
    padded[:, :, 8:] = 0  # the right half is padding the geometry brought in: it counts in no mean
    confidence[:, :, 8:] = 0.0
    keep = confident_pixels(confidence, label, 0.9, class_thresholds="teacher_mean", inside=padded)
    for c in (1, 2, 3):
        real = (label == c) & (padded > 0)
        assert torch.equal(keep[real] > 0, confidence[real] >= confidence[real].mean())
    with pytest.raises(ValueError, match="class_thresholds"):
        check_config(TrainConfig(class_thresholds="flexmatch"))


def test_class_share_thresholds_keep_the_argmax_mix():
    torch.manual_seed(0)
    label = torch.randint(0, 4, (2, 16, 16))
    label[:, :8] = 0  # background predicted on over half the pixels, as on the procedural crops
    sure = label == 0
    confidence = torch.where(sure, 0.8 + 0.2 * torch.rand(2, 16, 16), 0.85 * torch.rand(2, 16, 16))
    fixed = confident_pixels(confidence, label, 0.9)
    assert fixed[~sure].sum() == 0  # one threshold keeps background only
    padded = torch.ones(2, 16, 16)
    padded[:, :, 12:] = 0  # padding the geometry brought in: never kept, counts in no share
    keep = confident_pixels(confidence, label, 0.9, class_thresholds="class_share", inside=padded)
    real = padded > 0
    assert keep[~real].sum() == 0
    share = ((confidence >= 0.9) & real).sum() / real.sum()
    for c in range(4):  # each class keeps about the share the threshold keeps overall, its surest pixels
        of_class = (label == c) & real
        kept = keep[of_class] > 0
        assert abs(kept.float().mean() - share) < 0.1, c
        assert confidence[of_class][kept].min() >= confidence[of_class][~kept].max()
    nothing = confident_pixels(confidence * 0.5, label, 0.9, class_thresholds="class_share")
    assert nothing.sum() == 0  # a teacher sure of nothing teaches nothing, as at one threshold


@pytest.mark.parametrize("method", ["unimatch", "copy_paste"])
def test_oracle_pseudo_labels_teach_the_truth_and_need_it(dataset, tmp_path, method):
    cfg = load_config(None, {**TINY, "method": method, "model": "unet-small", "copy_paste_warmup": 0.0,
                             "oracle_pseudo_labels": True})
    train(cfg, dataset, tmp_path / "run", mode="pretrain", progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/pseudo_jaccard_kept")] == [1.0] * 4
    bare = tmp_path / "bare"
    write_dataset(bare, labeled=2, unlabeled=2, test=0, size=(72, 96), seed=5, progress=False)
    with pytest.raises(ValueError, match="oracle_pseudo_labels needs the unlabeled images' true masks"):
        train(cfg, bare, tmp_path / "run_bare", mode="pretrain", progress=False)


def test_class_mask_ratios_are_shares_of_the_kept_pixels():
    label = torch.tensor([[[0, 1], [3, 3]]])
    keep = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    ratios = class_mask_ratios(label, keep)
    assert ratios["mask_ratio_background"] == pytest.approx(1 / 3)
    assert ratios["mask_ratio_inertinite"] == 0 and ratios["mask_ratio_liptinite"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("fraction, step, expected", [(0.0, 0, 1.0), (0.5, 50, 1.0), (0.5, 0, 0.0067), (0.5, 25, 0.2865)])
def test_rampup_is_the_sigmoid_of_laine_and_aila(fraction, step, expected):
    context = StepContext(TrainConfig(steps=100, rampup_fraction=fraction), torch.device("cpu"), None, None,
                          StepTimer(torch.device("cpu")), 1)
    assert context.ramp(step) == pytest.approx(expected, abs=1e-3)


def test_pseudo_label_quality_scores_the_labels_against_the_truth_where_known():
    from ssl_seg.train.methods.base import pseudo_label_quality

    label, truth = torch.tensor([[[0, 1], [2, 3]]]), torch.tensor([[[0, 1], [2, 0]]])
    keep = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    scores = pseudo_label_quality(label, keep, torch.ones(1, 2, 2), truth)
    assert scores == {"pseudo_jaccard": pytest.approx(2 / 3), "pseudo_jaccard_kept": 1.0}


def test_procedural_truth_rides_along_but_is_never_a_target(dataset):
    """Online pretraining on synth data carries the unlabeled truth for diagnostics; the targets stay ignored."""
    from ssl_seg.train.data import crop_batches, training_sets
    from ssl_seg.runtime import workers_released_on_exit

    cfg = load_config(None, TINY)
    sets = training_sets(cfg, dataset, "pretrain", say=False)
    assert all(s.truth is not None and s.mask is None for s in sets.unlabeled)
    with workers_released_on_exit() as released:
        batch = next(crop_batches(sets.unlabeled, cfg, 2, 0, True, 0, 1, False, released))
    assert (batch["mask"] == 255).all() and (batch["truth"] != 255).any()


def test_copy_paste_trains_warms_up_on_labeled_crops_then_logs_the_teacher(dataset, tmp_path):
    cfg = load_config(None, {**TINY, "method": "copy_paste", "model": "unet-small", "copy_paste_warmup": 0.5,
                             "consistency_threshold": 0.0})
    summary = train(cfg, dataset, tmp_path / "run", mode="pretrain", progress=False)
    assert 0.0 <= summary["micro_jaccard_macerals"] <= 1.0
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss_mixed")] == [1, 2, 3, 4]
    # no teacher during the labeled-only warm-up (steps 1-2), its mask ratio and label quality after it
    for tag in ("train/mask_ratio", "train/mask_ratio_vitrinite", "train/pseudo_jaccard", "time/teacher_s_per_step"):
        assert [e.step for e in events.Scalars(tag)] == [3, 4], tag


def test_copy_paste_takes_image_label_and_weight_of_each_pixel_from_the_same_crop():
    from ssl_seg.train.methods.copy_paste import mix_both_ways, paste_boxes

    torch.manual_seed(0)
    n, h, w = 3, 12, 15
    x, u = torch.full((n, 3, h, w), 1.0), torch.full((n, 3, h, w), 2.0)  # the image says where a pixel came from
    y, p = torch.full((n, h, w), 1), torch.full((n, h, w), 2)
    w_x, w_u = torch.ones(n, h, w), torch.full((n, h, w), 0.5)
    box = paste_boxes(n, h, w, 2 / 3)
    assert (box.sum(dim=(1, 2)) == 8 * 10).all() and len({tuple(b.nonzero()[0].tolist()) for b in box}) > 1
    images, labels, weights = mix_both_ways(box, (x, y, w_x), (u, p, w_u))
    assert images.shape == (2 * n, 3, h, w) and labels.shape == weights.shape == (2 * n, h, w)
    source = images[:, 0]
    assert torch.equal(labels.float(), source) and torch.equal(weights, torch.where(source == 1, 1.0, 0.5))
    # the first half is unlabeled context with the labeled box, the second the reverse, with the same box
    assert torch.equal(source[:n] == 1, box) and torch.equal(source[n:] == 2, box)


def test_pixels_of_weight_zero_carry_no_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    label = torch.randint(0, 4, (2, 8, 8))
    keep = (torch.rand(2, 8, 8) > 0.5).float()
    pixel_weighted_loss(logits, label, keep, torch.rand(4) + 0.5, dice_weight=0.5).backward()
    per_pixel = logits.grad.abs().sum(dim=1)
    assert (per_pixel[keep == 0] == 0).all() and (per_pixel[keep > 0] > 0).all()
