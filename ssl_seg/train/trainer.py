"""One training loop for both stages, read top to bottom.

``finetune``: supervised on the labeled masks (class-weighted CE + Dice).
``pretrain``: a student learns the pseudo-labels of unlabeled images, plus online mean-teacher
consistency (the EMA teacher labels a weak view, the student learns it on another, CutMixed
view of the same geometry; pixels below a confidence threshold are left out), with labeled
batches mixed in at ``labeled_ratio``. Without pseudo-labels it takes the unlabeled images of
the data folder and learns them through the consistency alone (online only, UniMatch-style).

Single process or ``torchrun`` (DDP: NCCL on GPU, gloo on CPU); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from ssl_seg import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, class_code
from ssl_seg.augment import TrainAugment, cutmix
from ssl_seg.config import TrainConfig, check_config
from ssl_seg.data.dataset import CropDataset, DrawSampler
from ssl_seg.data.io import IMAGE_SUFFIXES, read_image
from ssl_seg.data.layout import Sample, discover, validate, why_no_labeled
from ssl_seg.inference import autocast_for, predict_proba, to_tensor
from ssl_seg.metrics import confusion_matrix, summarize
from ssl_seg.models import build_model, model_spec
from ssl_seg.tb import log_summary, panel
from ssl_seg.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from ssl_seg.train.losses import SegmentationLoss, class_weights, masked_cross_entropy


class TrainError(ValueError):
    """The run cannot start as asked; the message says how to fix it."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after a finished step whose state is saved in ``latest.pth``."""

    def __init__(self, step: int, latest: Path):
        super().__init__(f"stopped after step {step}, saved in {latest}")
        self.step, self.latest = step, latest


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise TrainError(f"--device {name!r} is not one ssl-seg runs on; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise TrainError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    return device


@contextlib.contextmanager
def stop_on_interrupt(distributed: bool = False):
    """Turn Ctrl-C (SIGINT) and SIGTERM (a scheduler's preemption) into a request (the list yielded gains
    an entry) that the loop honours after its step. In a single process a second signal acts at once.
    Under torchrun every signal is only a request: it forwards the terminal's Ctrl-C to ranks that got it
    already, and kills them itself after its --shutdown_timeout. Only in the main thread."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # a process started with a signal ignored (a background job of a script ignores SIGINT) keeps ignoring it
    handled = [sig for sig, handler in previous.items() if handler is not signal.SIG_IGN]

    def on_signal(signum, frame):
        requested.append(signum)
        if not distributed:
            for sig in handled:
                signal.signal(sig, previous[sig])

    for sig in handled:
        signal.signal(sig, on_signal)
    try:
        yield requested
    finally:
        for sig in handled:
            signal.signal(sig, previous[sig])


@contextlib.contextmanager
def workers_released_on_exit():
    """A shared flag that DataLoader workers read (see ``worker_signals``), set once the run no longer needs them."""
    released = multiprocessing.RawValue("b", 0)  # lock-free: a signal handler reads it
    try:
        yield released
    finally:
        released.value = 1


def worker_signals(released, worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which stops them after saving: a
    worker killed by one would make the main process fail mid-step. In a process group of their own,
    signals sent to the run's group (by a terminal or torchrun) miss them, and while the run lasts they
    ignore SIGTERM sent to each process (as Slurm does). Once ``released`` is set, a SIGTERM ends them at
    once (exit status 0): multiprocessing terminates leftover workers at interpreter exit and waits for them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_sigterm(signum, frame):
        if released.value:
            os._exit(0)  # not killed by the signal: torch's SIGCHLD handler would report that as an error

    signal.signal(signal.SIGTERM, on_sigterm)
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)


def setup_distributed(device_name: str = "auto") -> tuple[int, int, int]:
    """(rank, world_size, local_rank); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        on_gpu = torch.cuda.is_available() and (device_name == "auto" or device_name.startswith("cuda"))
        backend = "nccl" if on_gpu else "gloo"  # NCCL cannot reduce CPU tensors (--device cpu on a GPU machine)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def split_validation(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded split; at least one validation image once there are two or more."""
    if fraction <= 0 or len(samples) < 2:
        return samples, []
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = max(1, round(fraction * len(samples)))
    val = {int(i) for i in order[:n_val]}
    return [s for i, s in enumerate(samples) if i not in val], [s for i, s in enumerate(samples) if i in val]


# Settings that shape a run: resuming with other values would not continue the same run.
RUN_KEYS = ("steps", "batch_size", "tile_size", "lr", "weight_decay", "warmup_steps", "backbone_lr_scale",
            "class_weights", "dice_weight", "labeled_ratio", "consistency_weight", "consistency_threshold",
            "cutmix_prob", "student_jitter", "ema_decay", "val_fraction", "seed", "binary_class")
# What checkpoints written before a key existed were trained with.
RUN_KEY_BEFORE = {"student_jitter": "strong"}


def samples_identity(labeled: list[Sample], val: list[Sample], unlabeled: list[Sample], pseudo_dir: str | None) -> dict:
    """What a run trains on, compared on resume: image counts and a digest of the ids (and of the
    pseudo-labels' teacher and settings), so that a moved folder still resumes but other data does not."""
    digest = hashlib.sha256()
    for name, samples in (("labeled", labeled), ("val", val), ("unlabeled", unlabeled)):
        digest.update(name.encode() + b"\0" + "\0".join(sorted(s.id for s in samples)).encode() + b"\0")
    if pseudo_dir is not None:
        settings = json.loads((Path(pseudo_dir) / "manifest.json").read_text())
        compared = {k: settings.get(k) for k in ("teacher_sha256", "refiner", "threshold", "class_balance", "tta")}
        # keys recorded since 0.1.7, only where recorded: runs on older folders keep their digest
        compared.update({k: settings[k] for k in ("tile_size", "dinov2_labeled") if k in settings})
        digest.update(json.dumps(compared, sort_keys=True).encode())
    return {"labeled": len(labeled), "val": len(val), "unlabeled": len(unlabeled),
            "pseudo_labels": pseudo_dir is not None, "digest": digest.hexdigest()}


def saved_config(state: dict) -> TrainConfig:
    """The settings a checkpoint's run was started with: ``--resume`` continues with them unless flags say
    otherwise. Keys of other versions are dropped; keys added since take the value runs had before them."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {**RUN_KEY_BEFORE, **state.get("config", {})}
    return dataclasses.replace(TrainConfig(), **{key: value for key, value in saved.items() if key in known})


def model_settings(state: dict, cfg: TrainConfig) -> dict:
    """``model`` and ``pretrained`` of the run that wrote a checkpoint (``cfg``'s where it does not say)."""
    return {key: state.get("config", {}).get(key, getattr(cfg, key)) for key in ("model", "pretrained")}


def config_with_model_of(state: dict, cfg: TrainConfig, source: str, mode: str, say: bool) -> TrainConfig:
    """``cfg`` with the model of the checkpoint ``state``, which decides it; a configured other one is named
    as not used (printed where ``say``)."""
    model = model_settings(state, cfg)
    if (cfg.model, cfg.pretrained) != (model["model"], model["pretrained"]) and say:
        print(f"ssl-seg {mode}: {source} decides the model ({model['model']}"
              + (f" from {model['pretrained']}" if model["pretrained"] else "")
              + f"); the configured {cfg.model}" + (f" from {cfg.pretrained}" if cfg.pretrained else "")
              + " is not used", file=sys.stderr)
    return dataclasses.replace(cfg, **model)  # the checkpoints name the model they hold


def check_resumable(state: dict, cfg: TrainConfig, mode: str, latest: Path, samples: dict | None = None) -> None:
    """Refuse to resume ``latest`` under another command, with settings that change the run, or on other data."""
    if state.get("mode") != mode:
        raise TrainError(f"{latest} is a {state.get('mode')} run; resume it with that command")
    saved = {**RUN_KEY_BEFORE, **state.get("config", {})}
    changed = [f"{key} {saved[key]} (now {getattr(cfg, key)})" for key in RUN_KEYS
               if key in saved and saved[key] != getattr(cfg, key)]
    before = state.get("samples")  # absent in checkpoints of ssl_seg 0.1.3 and earlier
    if samples is not None and before is not None and before != samples:
        if before["pseudo_labels"] != samples["pseudo_labels"]:
            changed.append("pseudo-labels " + ("on" if before["pseudo_labels"] else "off (online only)")
                           + f" (now {'on' if samples['pseudo_labels'] else 'off'})")
        else:
            then, now = (", ".join(f"{k} {ids[k]}" for k in ("labeled", "val", "unlabeled"))
                         for ids in (before, samples))
            if then == now:  # the same numbers: files or pseudo-label settings differ
                changed.append(f"other image files or other pseudo-labels (a folder of another teacher or other "
                               f"pseudo-label settings; the counts match: {now})")
            else:
                changed.append(f"other images or pseudo-labels ({then}; now {now})")
    if changed:
        raise TrainError(f"{latest} was trained with {', '.join(changed)}; resume with the run's "
                         "own settings and data (flags and --config left out keep them), or start another --out")


def batch_split(batch_size: int, labeled_ratio: float) -> tuple[int, int]:
    """(labeled, unlabeled) crops per step; a ratio strictly between 0 and 1 keeps at least one of each.

    >>> batch_split(8, 0.25), batch_split(2, 0.25), batch_split(4, 0.9), batch_split(4, 0.0)
    ((2, 6), (1, 1), (3, 1), (0, 4))
    """
    if not 0.0 <= labeled_ratio <= 1.0:
        raise TrainError(f"labeled_ratio must lie in [0, 1], got {labeled_ratio}")
    if labeled_ratio in (0.0, 1.0):
        return (batch_size, 0) if labeled_ratio else (0, batch_size)
    if batch_size < 2:
        raise TrainError(f"batch_size {batch_size} cannot mix labeled and unlabeled crops; "
                         "use a batch size of at least 2, or labeled_ratio 0 or 1")
    n_labeled = min(batch_size - 1, max(1, round(batch_size * labeled_ratio)))
    return n_labeled, batch_size - n_labeled


def pseudo_samples(pseudo_dir: Path) -> list[Sample]:
    """Unlabeled images paired with their pseudo masks, from the folder ``pseudo-label`` wrote."""
    manifest = pseudo_dir / "manifest.json"
    if not manifest.is_file():  # say what the folder is instead, where it can be told
        if (pseudo_dir / "settings.json").is_file():
            done = len(list((pseudo_dir / "entries").glob("[!.]*.json")))
            raise TrainError(f"pseudo-labelling into {pseudo_dir} has not finished ({done} image(s) done, no "
                             "manifest.json yet); rerun the same `ssl-seg pseudo-label` command (each shard's, if "
                             "sharded) to finish it (finished images are kept)")
        if pseudo_dir.is_dir() and (pseudo_dir.parent / "manifest.json").is_file():
            raise TrainError(f"{pseudo_dir} lies inside the pseudo-label folder {pseudo_dir.parent} (its masks/ or "
                             f"confidence/); pass --pseudo-labels {pseudo_dir.parent}")
        if pseudo_dir.is_dir() and any(path.suffix.lower() in IMAGE_SUFFIXES for path in pseudo_dir.iterdir()):
            raise TrainError(f"{pseudo_dir} is a folder of images, not of pseudo-labels; pass --pseudo-labels the "
                             f"--out of `ssl-seg pseudo-label --images {pseudo_dir} --out PL`")
        raise TrainError(f"{manifest} not found; run `ssl-seg pseudo-label ... --out {pseudo_dir}` first, or pass "
                         "--pseudo-labels DIR where the folder has moved")
    # image paths are relative to the manifest's folder (absolute in folders written by ssl_seg 0.1.0; both work)
    try:
        content = json.loads(manifest.read_text())
        entries = content["images"]
        samples = [Sample(id=k, image=pseudo_dir / v["image"], mask=pseudo_dir / v["mask"])
                   for k, v in sorted(entries.items())]
        expected = int(content.get("images_expected", len(samples)))  # absent before ssl_seg 0.1.4
    except (ValueError, KeyError, TypeError, AttributeError):  # truncated JSON, or not a pseudo-label manifest
        raise TrainError(f"{manifest} is not a readable pseudo-label manifest; rerun `ssl-seg pseudo-label ... "
                         f"--out {pseudo_dir}` (finished images are kept)") from None
    if not samples:
        raise TrainError(f"{manifest} lists no pseudo-labeled images; rerun pseudo-label")
    if len(samples) < expected:
        raise TrainError(f"{manifest} lists {len(samples)} of {expected} images: shards of pseudo-label are "
                         f"unfinished; rerun each `ssl-seg pseudo-label ... --shard i/n --out {pseudo_dir}` "
                         "to finish it")
    summary = content.get("summary")
    if isinstance(summary, dict) and summary.get("confident_fraction") == 0:
        raise TrainError(f"{manifest}: no pixel kept a label (confidence threshold {content.get('threshold')}), so "
                         "every pseudo mask is ignored; rerun `ssl-seg pseudo-label` into another --out with a lower "
                         "--threshold, or fine-tune the teacher longer")
    missing = [s.image for s in samples if not s.image.is_file()]
    if missing:
        raise TrainError(f"{manifest}: {len(missing)} image(s) not found, first {missing[0]}; paths are relative to "
                         f"the manifest's folder, so move the images and the pseudo-label folder together, "
                         f"or rerun pseudo-label")
    missing = [s.mask for s in samples if not s.mask.is_file()]
    if missing:
        raise TrainError(f"{manifest}: {len(missing)} pseudo mask(s) not found, first {missing[0]}; rerun "
                         f"`ssl-seg pseudo-label ... --out {pseudo_dir}` to write them again")
    return samples


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


def train(cfg: TrainConfig, data: str | Path, out: str | Path, mode: str = "finetune", resume: bool = False,
          progress: bool = True, stop_after: int | None = None) -> dict:
    """Train and return the final validation summary (empty without validation images).

    ``stop_after`` ends this invocation after that many steps, saving ``latest.pth`` so that
    ``resume=True`` continues exactly (time-limited cluster jobs).
    """
    check_config(cfg)
    # saved absolute: a resume without these flags, from another working directory, still finds them
    cfg = dataclasses.replace(cfg, **{key: str(Path(getattr(cfg, key)).resolve())
                                      for key in ("pseudo_labels", "val_dir") if getattr(cfg, key)})
    if stop_after is not None and stop_after < 1:
        raise TrainError(f"--stop-after must be at least 1, got {stop_after}")
    rank, world, local_rank = setup_distributed(cfg.device)
    device = resolve_device(cfg.device, local_rank)
    out = Path(out)
    latest, best = out / "latest.pth", out / "best.pth"
    if latest.exists() and not resume:
        raise TrainError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    if resume and not latest.exists() and rank == 0:  # a requeued job may always pass --resume; a typo is seen
        print(f"ssl-seg {mode}: no run in {out} to resume (no latest.pth); starting a new one", file=sys.stderr)

    # --- data ---------------------------------------------------------------------------------
    binary = class_code(cfg.binary_class) if cfg.binary_class else None
    index = discover(data, binary_class=binary)
    validate(index)
    labeled, val_samples = split_validation(index.labeled, cfg.val_fraction, cfg.seed)
    if cfg.val_dir:
        val_index = discover(cfg.val_dir, binary_class=binary)
        validate(val_index)
        labeled, val_samples = index.labeled, val_index.labeled
        if not val_samples:
            raise TrainError(f"--val-dir {cfg.val_dir} has no labeled images (image + mask pairs) to validate on; "
                             "point it at a labeled dataset, or leave it out to validate on a split of --data")
    if not labeled and index.labeled:
        raise TrainError(f"val_fraction {cfg.val_fraction} leaves none of the {len(index.labeled)} labeled images of "
                         f"{data} to train on; lower it with --set val_fraction=0.1 (or 0: no validation)")
    if not labeled:
        raise TrainError(f"{data} has no labeled images to train on: {why_no_labeled(index)}")
    unlabeled = []
    if mode == "pretrain" and cfg.pseudo_labels:
        unlabeled = pseudo_samples(Path(cfg.pseudo_labels))
    elif mode == "pretrain" and index.unlabeled:  # online only: all-ignore targets, consistency alone
        unlabeled = [Sample(id=path.stem, image=path) for path in index.unlabeled]
    elif mode == "pretrain":
        raise TrainError(f"{data} has no unlabeled images; pass --pseudo-labels DIR (the output of "
                         "`ssl-seg pseudo-label`) or add images to its unlabeled folder")
    if rank == 0:
        pseudo = f", {len(unlabeled)} unlabeled" + (" with pseudo-labels" if cfg.pseudo_labels else "")
        print(f"ssl-seg {mode}: {index.summary()}; training on {len(labeled)} labeled"
              f"{pseudo if mode == 'pretrain' else ''}, validating on {len(val_samples)}"
              + (f" from {cfg.val_dir}" if cfg.val_dir else "")
              + ("" if val_samples else " (so best.pth holds the last saved step, not the best one)"), file=sys.stderr)
    n_labeled, n_unlabeled = ((cfg.batch_size, 0) if mode == "finetune"
                              else batch_split(cfg.batch_size, cfg.labeled_ratio))

    counts = np.zeros(NUM_CLASSES, np.int64)
    for sample in labeled:
        mask = sample.read_mask()
        counts += np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]

    def loader(samples, per_step, start_step, pseudo, released):
        # Decoded images stay in memory for small sets only (8,641 SS2 images would not fit).
        dataset = CropDataset(samples, cfg.tile_size, seed=cfg.seed + (7919 if pseudo else 0), pseudo=pseudo,
                              cache=len(samples) <= 512)
        sampler = DrawSampler(start_step * per_step * world, (cfg.steps - start_step) * per_step * world, rank, world)
        return iter(DataLoader(dataset, batch_size=per_step, sampler=sampler, num_workers=cfg.num_workers,
                               pin_memory=device.type == "cuda", persistent_workers=False, drop_last=True,
                               worker_init_fn=functools.partial(worker_signals, released)))

    # --- model, EMA, optimiser, schedule ------------------------------------------------------
    samples = samples_identity(labeled, val_samples, unlabeled, cfg.pseudo_labels if mode == "pretrain" else None)
    resume_state = load_checkpoint(latest) if resume and latest.exists() else None
    if resume_state is not None:
        check_resumable(resume_state, cfg, mode, latest, samples)
    torch.manual_seed(cfg.seed)
    if resume_state is not None:  # latest.pth holds the run: --init and --pretrained are not read again
        model = model_from_checkpoint(resume_state, latest)
        pretrained_backbone = resume_state.get("pretrained_backbone", False)
        cfg = config_with_model_of(resume_state, cfg, f"the resumed run {latest}", mode, rank == 0)
    elif cfg.init:  # --model and --pretrained are not used
        init_state = load_checkpoint(cfg.init)
        model = model_from_checkpoint(init_state, cfg.init)
        cfg = config_with_model_of(init_state, cfg, f"--init {cfg.init}", mode, rank == 0)
        # a backbone that started from hub weights keeps its slower learning rate down the teacher-student chain
        pretrained_backbone = init_state.get("pretrained_backbone",
                                             bool(init_state.get("config", {}).get("pretrained")))
    else:
        model = build_model(cfg.model, NUM_CLASSES, cfg.pretrained, cfg.local_files_only)
        pretrained_backbone = cfg.pretrained is not None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    ema.module.eval()  # the mean teacher predicts without dropout and with running BatchNorm statistics
    params = (model.parameter_groups(cfg.lr, cfg.backbone_lr_scale) if hasattr(model, "parameter_groups")
              and pretrained_backbone else model.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    criterion = SegmentationLoss(class_weights(counts, cfg.class_weights), cfg.dice_weight).to(device)
    augment = TrainAugment(student_jitter=cfg.student_jitter).to(device)

    start_step, best_score, best_step = 0, -1.0, -1
    if resume_state is not None:
        state = resume_state
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step, best_score, best_step = state["step"], state["best_score"], state["best_step"]
        if rank == 0:
            print(f"ssl-seg {mode}: resuming {latest} at step {start_step} of {cfg.steps}", file=sys.stderr)
    net = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
           if world > 1 else model)
    forward = torch.compile(net) if cfg.compile else net

    # events logged after the checkpoint (steps > start_step) are dropped: the resumed run writes them again
    writer = SummaryWriter(out / "tb", purge_step=start_step + 1) if rank == 0 else None
    if writer is not None and start_step == 0:
        writer.add_text("config", "```\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False) + "\n```", 0)
        writer.add_text("data", index.summary(), 0)

    def checkpoint_state(step: int) -> dict:
        return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "mode": mode, "config": cfg.to_dict(),
                "class_names": list(CLASS_NAMES), "model_spec": model_spec(model),
                "pretrained_backbone": pretrained_backbone, "best_score": best_score, "best_step": best_step,
                "samples": samples}

    # decoded now: an unreadable validation image stops the run before its first step, not at its first validation
    images_cache = {s.id: (read_image(s.image), s.read_mask()) for s in val_samples} if rank == 0 else {}
    summary: dict = {}
    timers = dict.fromkeys(["data", "augment", *(["teacher"] if n_unlabeled else []), "compute"], 0.0)
    window_start, window_images, window_steps = time.perf_counter(), 0, 0
    bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc=mode,
               disable=not progress or rank != 0, dynamic_ncols=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # Ctrl-C or SIGTERM finishes the step and saves it; under torchrun every rank stops after the same step.
    model.train()
    done, signalled = start_step, False
    with stop_on_interrupt(distributed=world > 1) as interrupted, workers_released_on_exit() as released:
        labeled_iter = loader(labeled, n_labeled, start_step, False, released) if n_labeled else None
        unlabeled_iter = loader(unlabeled, n_unlabeled, start_step, True, released) if n_unlabeled else None
        for step in bar:
            # Every random draw of a step (augmentation, CutMix, dropout) comes from this seed: exact resume.
            torch.manual_seed(cfg.seed * 1_000_003 + step * 101 + rank)
            tick = time.perf_counter()
            batch_x = next(labeled_iter) if labeled_iter else None
            batch_u = next(unlabeled_iter) if unlabeled_iter else None
            sync()
            timers["data"] += time.perf_counter() - tick

            tick = time.perf_counter()
            parts_images, parts_targets = [], []
            if batch_x is not None:
                img_x = batch_x["image"].to(device, non_blocking=True).float().div_(255)
                img_x, mask_x = augment.geometric(img_x, batch_x["mask"].to(device, non_blocking=True))
                parts_images.append(augment.weak(img_x).clamp_(0, 1))
                parts_targets.append(mask_x)
            if batch_u is not None:
                img_u = batch_u["image"].to(device, non_blocking=True).float().div_(255)
                # ``inside_u`` is 0 on padding (of small images, or brought in by the affine): no teacher
                # prediction is learned there
                img_u, pseudo_u, inside_u = augment.geometric(img_u, batch_u["mask"].to(device, non_blocking=True),
                                                              batch_u["valid"].to(device, non_blocking=True).float())
                weak_u = augment.weak(img_u).clamp_(0, 1)
                student_u = augment.student(img_u).clamp_(0, 1)
                sync()
                timers["augment"] += time.perf_counter() - tick
                tick = time.perf_counter()
                with torch.no_grad(), autocast_for(device, cfg.amp):
                    teacher_probs = ema.module(weak_u).float().softmax(dim=1)
                teacher_conf, teacher_label = teacher_probs.max(dim=1)
                sync()
                timers["teacher"] += time.perf_counter() - tick
                tick = time.perf_counter()
                student_u, pseudo_u, teacher_label, teacher_conf, inside_u = cutmix(
                    student_u, pseudo_u, teacher_label, teacher_conf, inside_u, prob=cfg.cutmix_prob)
                keep = (teacher_conf >= cfg.consistency_threshold).float() * inside_u
                parts_images.append(student_u)
                parts_targets.append(pseudo_u)
            images = torch.cat(parts_images)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            sync()
            timers["augment"] += time.perf_counter() - tick

            tick = time.perf_counter()
            with autocast_for(device, cfg.amp):
                logits = forward(images)
            loss, parts = criterion(logits, torch.cat(parts_targets))
            losses = {"loss_x": loss.detach()} if batch_u is None else {}
            logging = writer is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps)
            if batch_u is not None and logging:  # the labeled and pseudo-labeled parts on their own as well
                if n_labeled:
                    losses["loss_x"] = criterion(logits[:n_labeled].detach(), parts_targets[0])[0]
                if cfg.pseudo_labels and bool((pseudo_u != IGNORE_INDEX).any()):
                    losses["loss_pseudo"] = criterion(logits[n_labeled:].detach(), pseudo_u)[0]
            if batch_u is not None:
                loss_cons = masked_cross_entropy(logits[n_labeled:], teacher_label, keep)
                loss = loss + cfg.consistency_weight * loss_cons
                losses["loss_consistency"] = loss_cons.detach()
                losses["mask_ratio"] = keep.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema.update_parameters(model)
            sync()
            timers["compute"] += time.perf_counter() - tick
            window_images += images.shape[0] * world
            window_steps += 1

            done = step + 1
            if logging:
                elapsed = time.perf_counter() - window_start
                writer.add_scalar("train/loss", loss.item(), done)
                for name, value in {**losses, **parts}.items():
                    writer.add_scalar(f"train/{name}", float(value), done)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[-1], done)
                writer.add_scalar("train/images_per_s", window_images / max(elapsed, 1e-9), done)
                if device.type == "cuda":
                    writer.add_scalar("train/peak_memory_gib", torch.cuda.max_memory_allocated(device) / 2**30, done)
                for name, seconds in timers.items():
                    writer.add_scalar(f"time/{name}_s_per_step", seconds / window_steps, done)
                timers = dict.fromkeys(timers, 0.0)
                window_start, window_images, window_steps = time.perf_counter(), 0, 0
                bar.set_postfix(loss=f"{loss.item():.3f}")

            signalled = bool(interrupted)
            if world > 1:  # a signal to any rank stops them all after this step
                flag = torch.tensor([float(signalled)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                signalled = bool(flag.item())
            stopping = (stop_after is not None and done - start_step >= stop_after) or signalled
            if stopping and not (done % cfg.val_every == 0 or done == cfg.steps):
                if rank == 0:
                    save_checkpoint(latest, checkpoint_state(done))
                if world > 1:
                    dist.barrier()  # no rank exits before the step is saved
            elif done % cfg.val_every == 0 or done == cfg.steps:
                if rank == 0:
                    if val_samples:
                        summary, examples = evaluate_model(model, val_samples, cfg, device, images_cache)
                        log_summary(writer, "eval", summary, done)
                        if mode == "pretrain":
                            teacher_summary, _ = evaluate_model(ema.module, val_samples, cfg, device, images_cache)
                            log_summary(writer, "eval_teacher", teacher_summary, done)
                        if done % cfg.image_every == 0 or done == cfg.steps:
                            for i, (image, truth, pred) in enumerate(examples):
                                writer.add_image(f"eval/panel_{i}", panel(image, truth, pred), done, dataformats="HWC")
                        score = summary["micro_jaccard_macerals"]
                        if score > best_score:
                            best_score, best_step = score, done
                            save_checkpoint(best, checkpoint_state(done))
                        bar.write(f"step {done}: eval micro Jaccard (macerals) {score:.4f}, "
                                  f"best {best_score:.4f} @ {best_step}")
                    save_checkpoint(latest, checkpoint_state(done))
                    if not val_samples:  # without validation the latest model is the one to use
                        save_checkpoint(best, checkpoint_state(done))
                    writer.flush()
                if world > 1:
                    dist.barrier()
            if stopping:
                break

    if writer is not None:
        writer.close()
    bar.close()
    if signalled and done < cfg.steps:
        raise TrainingInterrupted(done, latest)
    if rank == 0 and start_step == cfg.steps:
        print(f"{out} already finished all {cfg.steps} steps; nothing to do", file=sys.stderr)
    elif rank == 0 and done < cfg.steps:
        print(f"stopped at step {done} of {cfg.steps} (--stop-after {stop_after}); add --resume to the same "
              "command to continue", file=sys.stderr)
    return summary
