"""``ssl-seg demo``: the whole loop on a procedural dataset, supervised versus semi-supervised.

Both arms get the same total number of optimiser steps and the same seed:
- supervised: ``finetune`` on the labeled masks for ``total_steps``;
- semi-supervised: ``finetune`` a teacher, ``pseudo-label`` the unlabeled images (TTA, confident
  pixels only), ``pretrain`` a student (starting from the teacher) on them with mean-teacher
  consistency (and labeled batches mixed in at ``labeled_ratio``), then ``finetune`` it if steps
  are left; the teacher's steps count in the budget.
Every number printed comes from ``evaluate`` on held-out test masks of the procedural data.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path


from ssl_seg.config import load_config
from ssl_seg.data.io import output_folder, save_json


@dataclass
class DemoConfig:
    labeled: int = 8
    unlabeled: int = 200
    test: int = 48                 # fewer left the arms' scores within noise (experiments/RESULTS.md)
    size: tuple[int, int] = (192, 256)
    # Bodies drawn larger in pixels (still half their size in a 1360x1024 scene): at 1, thin bodies fall
    # below SegFormer's stride-4 output and no labels, pseudo or true, made a difference
    # (experiments/RESULTS.md, "Why magnification 2.5").
    magnification: float = 2.5
    total_steps: int = 480
    teacher_steps: int = 240       # of total_steps: teacher fine-tune
    pretrain_steps: int = 240      # of total_steps: student pretraining; the rest (if any) fine-tunes it
    batch_size: int = 8
    tile_size: int = 160
    threshold: float = 0.9         # pseudo-label confidence; below it pixels are ignored
    tta: int = 8                   # flip/rot90 views the teacher averages when pseudo-labelling
    # Superpixels made the procedural pseudo-labels worse (experiments/RESULTS.md): off.
    refine: str = "none"
    # Share of labeled crops in each pretraining batch; 0 (pseudo-labels only) scored lower
    # (experiments/RESULTS.md).
    labeled_ratio: float = 0.5
    model: str = "segformer-tiny"
    lr: float = 1e-3
    num_workers: int = 2
    supervised_only: bool = False
    # Also train the student on the generator's true masks of the unlabeled images, with the same
    # teacher, steps and settings: the ceiling that perfect pseudo-labels would reach.
    oracle: bool = False

    @classmethod
    def from_yaml(cls, path: str | Path | None) -> "DemoConfig":
        """The demo settings of a flat YAML file (``experiments/demo.yaml``), the defaults where it is silent."""
        return load_config(path, base=cls(), what="demo")


def _train(data: Path, out: Path, steps: int, demo: DemoConfig, seed: int, progress: bool, mode: str = "finetune",
           **extra) -> dict:
    from ssl_seg.train.loop import train

    cfg = load_config(None, {"model": demo.model, "steps": steps, "batch_size": demo.batch_size,
                             "tile_size": demo.tile_size, "lr": demo.lr, "seed": seed,
                             "warmup_steps": min(30, steps // 5),
                             "val_every": max(steps // 4, 1), "image_every": max(steps // 2, 1),
                             # All labeled images train: with 8, a 2-image validation split costs a
                             # quarter of the labels and picks checkpoints by noise. Runs keep their last step.
                             "val_fraction": 0.0,
                             "num_workers": demo.num_workers, **extra})
    return train(cfg, data, out, mode=mode, resume=(out / "latest.pth").exists(), progress=progress)


def _student(data: Path, runs: Path, name: str, pseudo: Path, demo: DemoConfig, seed: int, progress: bool,
             stage) -> Path:
    """Pretrain a student from the teacher on ``pseudo``, then fine-tune it if steps are left; its checkpoint."""
    student_steps = demo.total_steps - demo.teacher_steps - demo.pretrain_steps
    stage(f"semi-supervised 3/4: {name} pretrain {demo.pretrain_steps} steps on {pseudo}")
    pretrained = runs / f"{name}_pretrain"
    _train(data, pretrained, demo.pretrain_steps, demo, seed, progress, mode="pretrain", pseudo_labels=str(pseudo),
           init=str(runs / "teacher" / "best.pth"), labeled_ratio=demo.labeled_ratio)
    if not student_steps:
        stage(f"semi-supervised 4/4: no steps left to fine-tune the {name}")
        return pretrained / "best.pth"
    stage(f"semi-supervised 4/4: {name} finetune {student_steps} steps")
    _train(data, runs / name, student_steps, demo, seed, progress, init=str(pretrained / "latest.pth"),
           lr=demo.lr * 0.5)
    return runs / name / "best.pth"


def _truth_as_pseudo_labels(data: Path, out: Path) -> Path:
    """A pseudo-label folder holding the true masks of the unlabeled scenes."""
    import numpy as np

    from ssl_seg.data.layout import list_images
    from ssl_seg.data.pseudo_labels import write_truth_folder

    masks = {image: np.load(data / "train" / "unlabeled_truth" / f"{image.stem}_gt.npy")
             for image in list_images(data / "train" / "unlabeled")}
    return write_truth_folder(out, masks, teacher="generator truth")


def _check_same_demo(out: Path, seed: int, demo: DemoConfig) -> None:
    """A rerun resumes the demo in ``out``; one with other settings would reuse runs made with the old ones."""
    # num_workers changes how fast, not what is trained; oracle and supervised_only add or drop arms
    wanted = json.loads(json.dumps({"seed": seed, **dataclasses.asdict(demo)}))  # as the record reads back
    for key in ("num_workers", "oracle", "supervised_only"):
        wanted.pop(key)
    record = out / "demo_settings.json"
    if record.is_file():
        before = json.loads(record.read_text())
        changed = [f"{key} {before.get(key)} -> {value}" for key, value in wanted.items() if before.get(key) != value]
        if changed:
            raise ValueError(f"{out} holds a demo made with other settings ({'; '.join(changed)}); pass another "
                             f"--out, or delete {out} to start over")
    else:
        save_json(record, wanted)


def _score(checkpoint: Path, data: Path, out: Path, progress: bool) -> dict:
    from ssl_seg.evaluate import evaluate_dirs
    from ssl_seg.predict import predict_folder

    predict_folder(checkpoint, data / "test", out, tile_size=256, overlays=True, progress=progress)
    return evaluate_dirs(out, data / "test_answers")


def run_demo(out: str | Path = "demo_out", seed: int = 0, config: str | Path | None = None,
             progress: bool = True) -> dict:
    """Run both arms and print the comparison table; returns the evaluation results by arm."""
    from ssl_seg.data.synthetic import write_dataset
    from ssl_seg.metrics import format_table
    from ssl_seg.pseudo.run import pseudo_label
    from ssl_seg.report import build_report

    out = output_folder(out)
    demo = DemoConfig.from_yaml(config)
    if not demo.supervised_only and (demo.teacher_steps <= 0 or demo.pretrain_steps <= 0
                                     or demo.teacher_steps + demo.pretrain_steps > demo.total_steps):
        raise ValueError(f"demo config {config}: teacher_steps and pretrain_steps must be positive and sum to at "
                         f"most total_steps ({demo.total_steps})")
    _check_same_demo(out, seed, demo)
    data = out / "data"
    started = time.perf_counter()
    timings = {}

    def stage(name: str) -> None:
        timings[name] = round(time.perf_counter() - started, 1)
        print(f"[demo {timings[name]:6.1f}s] {name}", flush=True)

    stage("writing the procedural dataset")
    write_dataset(data, demo.labeled, demo.unlabeled, demo.test, demo.size, seed, progress=progress,
                  unlabeled_truth=demo.oracle, magnification=demo.magnification)

    results = {}
    stage(f"supervised: finetune {demo.total_steps} steps on {demo.labeled} labeled images")
    _train(data, out / "runs" / "supervised", demo.total_steps, demo, seed, progress)
    results["supervised"] = _score(out / "runs" / "supervised" / "best.pth", data, out / "pred" / "supervised",
                                   progress)

    if not demo.supervised_only:
        stage(f"semi-supervised 1/4: teacher finetune {demo.teacher_steps} steps")
        _train(data, out / "runs" / "teacher", demo.teacher_steps, demo, seed, progress)
        # The teacher is the supervised model at a smaller budget: scored too, so that the table
        # shows whether the semi-supervised gain is more than the supervised arm over-training.
        results[f"teacher ({demo.teacher_steps} steps)"] = _score(out / "runs" / "teacher" / "best.pth", data,
                                                                   out / "pred" / "teacher", progress)
        stage(f"semi-supervised 2/4: pseudo-label {demo.unlabeled} unlabeled images "
              f"(TTA {demo.tta}, refine {demo.refine})")
        pseudo_label(out / "runs" / "teacher" / "best.pth", data / "train" / "unlabeled", out / "pseudo",
                     refine=demo.refine, threshold=demo.threshold, tta=demo.tta, tile_size=256, progress=progress)
        student = _student(data, out / "runs", "student", out / "pseudo", demo, seed, progress, stage)
        results["semi-supervised"] = _score(student, data, out / "pred" / "semi_supervised", progress)
        if demo.oracle:
            stage("oracle: the same student on the true masks of the unlabeled images")
            oracle = _student(data, out / "runs", "oracle_student",
                              _truth_as_pseudo_labels(data, out / "oracle_labels"), demo, seed, progress, stage)
            results["oracle student (true masks)"] = _score(oracle, data, out / "pred" / "oracle", progress)

    final_arm = "semi_supervised" if "semi-supervised" in results else "supervised"
    stage("maceral composition report")
    build_report(out / "pred" / final_arm, out / "report", images_dir=data / "test")
    stage("done")

    print()
    print(f"Test scores on {demo.test} procedural test images ({demo.size[0]}x{demo.size[1]}, magnification "
          f"{demo.magnification:g}), "
          f"{demo.labeled} labeled + {demo.unlabeled} unlabeled, {demo.total_steps} total steps, seed {seed}:")
    print(format_table(results))
    print()
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    print(f"TensorBoard: tensorboard --logdir {out / 'runs'}  (pseudo-label statistics: {out / 'pseudo' / 'tb'})")
    print(f"report: {out / 'report' / 'report.html'}")
    save_json(out / "demo_results.json", {"seed": seed, "config": dataclasses.asdict(demo), "stages_s": timings,
                                          "results": {k: {key: v for key, v in r.items() if key != "per_image"}
                                                      for k, r in results.items()}})
    return results
