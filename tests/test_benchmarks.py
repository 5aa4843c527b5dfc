"""Each benchmark script in experiments/ still runs: its --smoke mode in a subprocess, checked by its JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def run_smoke(script: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(
        [sys.executable, str(EXPERIMENTS / f"{script}.py"), "--smoke", "--device", "cpu", "--json", str(out), *extra],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    assert "device: CPU" in completed.stdout and "torch" in completed.stdout
    result = json.loads(out.read_text())
    assert result["device_type"] == "cpu" and result["torch"]
    return result


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_stage_timer_window_opens_before_item_reset_at(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    from bench_common import StageTimer

    timer = StageTimer(torch.device("cpu"))
    work = timer.wrap("work", lambda item: item)
    for item in timer.wrap_iterator("wait", range(5), reset_at=3):
        work(item)
    # items 3 and 4 are inside the window; the last "wait" is the request that ends the iterator
    assert timer.calls == {"wait": 3, "work": 2}


def test_pseudo_label_smoke(tmp_path):
    result = run_smoke("bench_pseudo_label", tmp_path)
    assert positive(result["images_per_s"])
    assert result["prompts_per_image"] > 0  # the refiner saw prompts
    stages = result["stage_ms_per_image"]
    assert {"decode wait", "teacher", "SAM encoder", "SAM decoder", "write (PNG + JSON)"} <= set(stages)
    assert positive(stages["teacher"]) and positive(stages["SAM encoder"])
    flops = result["gflops_per_image"]
    assert positive(flops["teacher"]) and positive(flops["sam_encoder"])
    assert flops["total"] == pytest.approx(flops["teacher"] + flops["sam_encoder"] + flops["sam_decoder"])
    assert result["achieved_tflops"] == pytest.approx(flops["total"] * result["images_per_s"] / 1e3)
    assert result["peak_tflops"] is None and result["target_met"] is None  # no peak or target on a CPU
    assert positive(result["per_image_reference_images_per_s"])
    assert result["batched_over_per_image"] == pytest.approx(result["images_per_s"]
                                                             / result["per_image_reference_images_per_s"])
    assert {"transformers", "kornia", "torchvision", "cpu", "cpu_cores"} <= set(result)


@pytest.mark.parametrize("mode", ["finetune", pytest.param("pretrain", marks=pytest.mark.slow)])
def test_train_step_smoke(tmp_path, mode):
    result = run_smoke("bench_train_step", tmp_path, "--mode", mode)
    assert result["settings"]["mode"] == mode
    assert positive(result["images_per_s"]) and result["windows"] >= 1
    parts = result["ms_per_step"]
    assert {"data wait", "augmentation", "forward + backward + optimizer"} <= set(parts)
    assert positive(parts["forward + backward + optimizer"])
    assert sum(result["share_of_step"].values()) >= 0.99  # the parts (and "other") make up the step
    assert result["peak_memory_gib"] is None  # only logged on CUDA
    assert isinstance(result["augmentation_within_5_percent"], bool) and isinstance(result["data_starved"], bool)


def test_seed_way_smoke(tmp_path):
    result = run_smoke("bench_seed_way", tmp_path)
    for part in ("training", "sam"):
        figures = result[part]
        assert positive(figures["ours_images_per_s"]) and positive(figures["seed_images_per_s"])
        assert figures["ratio"] == pytest.approx(figures["ours_images_per_s"] / figures["seed_images_per_s"])
    sam = result["sam"]
    assert sam["prompts_per_image"] > 0
    # ours embeds once and batches the prompts; the seed's way calls the model once per prompt
    assert sam["model_calls_per_image"]["ours"] < sam["model_calls_per_image"]["seed"]
    assert sam["maps_agree_fraction"] > 0.9


def test_augment_smoke(tmp_path):
    result = run_smoke("bench_augment", tmp_path)
    figures = result["ms_per_batch"]
    assert all(positive(ms) for ms in figures.values())
    assert "photometric strong (pipeline)" in figures and "  strong ColorJiggle alone, p=1" in figures


def test_check_sam_precision_smoke(tmp_path):
    result = run_smoke("check_sam_precision", tmp_path)
    (row,) = result["agreement"]
    assert row["prompts"] > 0
    # on a CPU no autocast is used: bf16 and fp32 runs are the same run, and both ways agree
    assert row["batched vs batched, bf16 vs fp32"] == 1.0
    assert row["batched vs one at a time, fp32"] > 0.99


def test_online_ssl_benchmark_smoke(tmp_path):
    subprocess.run([sys.executable, str(EXPERIMENTS / "online_ssl_benchmark.py"), "--smoke", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=600)
    result = json.loads((tmp_path / "results.json").read_text())
    scores = result["scores"]["0"]
    assert set(scores) == {"supervised@1x", "unimatch", "supervised@1x ema", "unimatch ema"}
    assert all(0 <= v <= 1 for v in scores.values())
    assert "unimatch vs best supervised" in result["table"] and "unimatch ema vs best supervised" in result["table"]
    per_class = result["test_iou_per_class"]["0"]
    assert set(per_class) == {"supervised@1x", "unimatch"}
    for split in per_class.values():  # over all test scenes, then within each illumination present
        assert "all" in split and set(split) <= {"all", "white", "fluorescence"} and len(split) > 1
        assert all(set(ious) == {"background", "inertinite", "vitrinite", "liptinite"} for ious in split.values())
        assert all(0 <= v <= 1 for v in split["all"].values())
        assert all(v is None or 0 <= v <= 1 for ious in split.values() for v in ious.values())


def test_real_coal_kfold_smoke(tmp_path, real_data):
    subprocess.run([sys.executable, str(EXPERIMENTS / "real_coal_kfold.py"), "--smoke", "--real", str(real_data),
                    "--out", str(tmp_path)], check=True, capture_output=True, text=True, timeout=600)
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["scores"]["0"]) == {"supervised", "copy_paste"}
    assert all(0 <= v <= 1 for v in result["scores"]["0"].values())
    held_out = sorted(p.name for fold in range(3) for p in (tmp_path / f"fold{fold}" / "data" / "test").iterdir())
    assert held_out == sorted(p.name for p in (real_data / "coal_maceral" / "images").iterdir())  # each image once


@pytest.mark.parametrize("ablation", ["none", "flips"])
def test_recipe_fit_probe_ablates_augmentation(tmp_path, ablation):
    from ssl_seg.data.synthetic import write_dataset

    write_dataset(tmp_path / "data", 2, 3, 1, (64, 80), 0, progress=False, unlabeled_truth=True)
    subprocess.run([sys.executable, str(EXPERIMENTS / "recipe_fit_probe.py"), "--name", "probe", "--steps", "2",
                    "--data", str(tmp_path / "data"), "--out", str(tmp_path), "--augment", ablation,
                    "--set", "tile_size=64", *(["--all-truth"] if ablation == "none" else [])],
                   check=True, capture_output=True, text=True, timeout=300)
    result = json.loads((tmp_path / "results.jsonl").read_text())
    assert result["augment"] == ablation and result["steps"] == 2
    trained_on = len(list((tmp_path / "probe_s0" / "pred_train").glob("*_pred.npy")))
    assert trained_on == (5 if ablation == "none" else 2)  # --all-truth: the unlabeled scenes join, with their truth
    assert 0 <= result["train"] <= 1 and 0 <= result["test"] <= 1
    assert set(result["test_iou"]) == {"background", "inertinite", "vitrinite", "liptinite"}


def test_recipe_fit_probe_augmentation_ablations(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import ssl_seg.augment as augment
    from recipe_fit_probe import ablate_augmentation

    monkeypatch.setattr(augment, "photometric", augment.photometric)
    monkeypatch.setattr(augment, "GeometricAugment", augment.GeometricAugment)
    images, masks = torch.rand(2, 3, 16, 16), torch.randint(0, 4, (2, 16, 16))
    ablate_augmentation("none")
    pipeline = augment.TrainAugment()
    out_images, out_masks = pipeline.geometric(images, masks)
    assert torch.equal(out_images, images) and torch.equal(out_masks, masks)
    assert torch.equal(pipeline.weak(images), images) and torch.equal(pipeline.student(images), images)


def test_teacher_crop_probe_keeps_by_the_class_thresholds_rule(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import teacher_crop_probe
    from ssl_seg.config import load_config
    from ssl_seg.data.synthetic import write_dataset
    from ssl_seg.train.loop import train

    write_dataset(tmp_path / "data", 2, 3, 0, (64, 80), 0, progress=False, unlabeled_truth=True)
    cfg = load_config(None, {"steps": 1, "batch_size": 2, "tile_size": 64, "num_workers": 0, "val_fraction": 0.0,
                             "model": "unet-small"})
    train(cfg, tmp_path / "data", tmp_path / "arm", progress=False)

    class SureOfBackground(torch.nn.Module):  # a teacher whose background is surer than its macerals
        def forward(self, images):
            logits = torch.randn(images.shape[0], 4, *images.shape[-2:])
            return logits + torch.tensor([1.5, 0.0, 0.0, 0.0]).view(1, 4, 1, 1)

    monkeypatch.setattr(teacher_crop_probe, "model_from_checkpoint", lambda state, path: SureOfBackground())
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the probe's one thread: not for the suite
    rows = {}
    for rule in ("fixed", "class_share"):
        monkeypatch.setattr(sys, "argv", ["teacher_crop_probe.py", "--run", str(tmp_path / "arm"), "--weights",
                                          "latest.pth", "--batches", "2", "--threshold", "0.6",
                                          "--class-thresholds", rule])
        teacher_crop_probe.main()
        lines = capsys.readouterr().out.splitlines()[1:]
        rows[rule] = {line.split("[")[0].strip(): json.loads(line[line.index("["):]) for line in lines}
    argmax = rows["fixed"]["view argmax"]
    assert rows["fixed"]["view kept"][0] > argmax[0] + 0.1  # one threshold over-keeps the surest class
    assert all(abs(kept - share) < 0.02 for kept, share in zip(rows["class_share"]["view kept"], argmax))


def test_teacher_crop_probe_prints_each_class_share(tmp_path):
    from ssl_seg.config import load_config
    from ssl_seg.data.synthetic import write_dataset
    from ssl_seg.train.loop import train

    write_dataset(tmp_path / "data", 2, 3, 0, (64, 80), 0, progress=False, unlabeled_truth=True)
    cfg = load_config(None, {"steps": 1, "batch_size": 2, "tile_size": 64, "num_workers": 0, "val_fraction": 0.0,
                             "model": "unet-small"})
    train(cfg, tmp_path / "data", tmp_path / "arm", progress=False)
    out = subprocess.run([sys.executable, str(EXPERIMENTS / "teacher_crop_probe.py"), "--run", str(tmp_path / "arm"),
                          "--weights", "latest.pth", "--batches", "2"],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    rows = {line.split("[")[0].strip(): json.loads(line[line.index("["):]) for line in out.splitlines()[1:]}
    assert set(rows) == {"truth", "raw argmax", "view argmax", "view kept", "kept precision"}
    for name in ("truth", "raw argmax", "view argmax"):  # shares of pixels that exist: they sum to 1
        assert len(rows[name]) == 4 and abs(sum(rows[name]) - 1) < 1e-3, name
    assert all(p is None or 0 <= p <= 1 for p in rows["kept precision"])
    # a class with no kept pixel has no precision
    assert all(share == 0 for p, share in zip(rows["kept precision"], rows["view kept"]) if p is None)
