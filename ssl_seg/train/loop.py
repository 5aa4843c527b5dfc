"""The training loop of ``finetune`` and ``pretrain``, read top to bottom.

batch -> the method's loss (``train/methods/``) -> optimizer step -> EMA -> log -> validate / save.
``finetune`` is supervised; ``pretrain`` runs ``cfg.method`` on labeled and unlabeled crops (with the
pseudo-labels of ``pseudo-label`` where given, online only otherwise). Single process or ``torchrun``
(DDP: NCCL on GPU, gloo on CPU); only rank 0 writes. Ctrl-C or SIGTERM finishes the step and saves it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from ssl_seg import CLASS_NAMES
from ssl_seg.augment import TrainAugment
from ssl_seg.config import TrainConfig, check_config
from ssl_seg.data.io import output_folder, read_image, remove_stale_temporaries
from ssl_seg.errors import DataError, TrainError, TrainingInterrupted, one_line
from ssl_seg.models import build_model, model_spec
from ssl_seg.runtime import resolve_device, setup_distributed, stop_on_interrupt, workers_released_on_exit
from ssl_seg.tb import log_summary, panel, summary_writer
from ssl_seg.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from ssl_seg.train.data import TrainingSets, batch_split, crop_batches, training_sets
from ssl_seg.train.losses import SegmentationLoss, class_weights
from ssl_seg.train.methods import StepContext, StepTimer, method_for
from ssl_seg.train.methods.supervised import Supervised
from ssl_seg.train.resume import check_resumable, config_with_model_of, samples_identity
from ssl_seg.train.validate import evaluate_model


@dataclass
class Run:
    """What a checkpoint holds, and where the run writes."""

    cfg: TrainConfig
    mode: str
    out: Path
    model: torch.nn.Module
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    pretrained_backbone: bool
    samples: dict
    start_step: int = 0
    best_score: float = -1.0
    best_step: int = -1
    method_state: dict = dataclasses.field(default_factory=dict)  # the method's, as the resumed checkpoint held it
    method: object = None  # the running method, whose state each checkpoint takes when it is written

    @property
    def latest(self) -> Path:
        return self.out / "latest.pth"

    @property
    def best(self) -> Path:
        return self.out / "best.pth"

    def state(self, step: int) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "step": step,
                "mode": self.mode, "config": self.cfg.to_dict(), "class_names": list(CLASS_NAMES),
                "model_spec": model_spec(self.model), "pretrained_backbone": self.pretrained_backbone,
                "best_score": self.best_score, "best_step": self.best_step, "samples": self.samples,
                "method": self.method.state_dict() if self.method is not None else self.method_state}


def starting_model(cfg: TrainConfig, resume_state: dict | None, latest: Path, mode: str, say: bool):
    """(model, cfg with the model's name, whether its backbone started from hub weights)."""
    if resume_state is not None:  # latest.pth holds the run: --init and --pretrained are not read again
        model = model_from_checkpoint(resume_state, latest)
        cfg = config_with_model_of(resume_state, cfg, f"the resumed run {latest}", mode, say)
        return model, cfg, resume_state.get("pretrained_backbone", False)
    if cfg.init:  # --model and --pretrained are not used
        init_state = load_checkpoint(cfg.init)
        model = model_from_checkpoint(init_state, cfg.init)
        cfg = config_with_model_of(init_state, cfg, f"--init {cfg.init}", mode, say)
        # a backbone that started from hub weights keeps its slower learning rate down the teacher-student chain
        return model, cfg, init_state.get("pretrained_backbone", bool(init_state.get("config", {}).get("pretrained")))
    return build_model(cfg.model, pretrained=cfg.pretrained, local_files_only=cfg.local_files_only), cfg, \
        cfg.pretrained is not None


def start_run(cfg: TrainConfig, mode: str, out: Path, sets: TrainingSets, resume: bool, device, rank: int) -> Run:
    """The model, EMA, optimizer and schedule: new, or as ``latest.pth`` left them."""
    samples = samples_identity(sets.labeled, sets.val, sets.unlabeled, cfg.pseudo_labels if mode == "pretrain" else None)
    latest = out / "latest.pth"
    resume_state = load_checkpoint(latest) if resume and latest.exists() else None
    if resume_state is not None:
        check_resumable(resume_state, cfg, mode, latest, samples)
    torch.manual_seed(cfg.seed)
    model, cfg, pretrained_backbone = starting_model(cfg, resume_state, latest, mode, rank == 0)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    ema.module.eval()  # the mean teacher predicts without dropout and with running BatchNorm statistics
    params = model.parameter_groups(cfg.lr, cfg.backbone_lr_scale) if pretrained_backbone else model.parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    run = Run(cfg, mode, out, model, ema, optimizer, scheduler, pretrained_backbone, samples)
    if resume_state is not None:
        ema.load_state_dict(resume_state["ema"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        run.start_step = resume_state["step"]
        run.best_score, run.best_step = resume_state["best_score"], resume_state["best_step"]
        run.method_state = resume_state.get("method", {})
        if rank == 0:
            print(f"ssl-seg {mode}: resuming {latest} at step {run.start_step} of {cfg.steps}", file=sys.stderr)
    return run


def prepare(cfg: TrainConfig, out: Path, mode: str, resume: bool, stop_after: int | None):
    """Checked settings (paths made absolute), (rank, world), the device; refuses to overwrite a run."""
    check_config(cfg)
    # saved absolute: a resume without these flags, from another working directory, still finds them
    cfg = dataclasses.replace(cfg, **{key: str(Path(getattr(cfg, key)).resolve())
                                      for key in ("pseudo_labels", "val_dir") if getattr(cfg, key)})
    if stop_after is not None and stop_after < 1:
        raise TrainError(f"--stop-after must be at least 1, got {stop_after}")
    output_folder(out)
    rank, world, local_rank = setup_distributed(cfg.device)
    device = resolve_device(cfg.device, local_rank)
    if (out / "latest.pth").exists() and not resume:
        raise TrainError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    if rank == 0 and remove_stale_temporaries(out):  # what a run killed while saving left (as large as a checkpoint)
        print(f"ssl-seg {mode}: removed unfinished checkpoint temporaries in {out}", file=sys.stderr)
    others = sorted(path.name for path in out.glob("[!.]*.pth")) if not (out / "latest.pth").exists() else []
    if others:  # a best.pth (or a copied checkpoint) without latest.pth is no run to resume, and no file to overwrite
        raise TrainError(f"{out} holds {', '.join(others)} but no latest.pth, so there is no run to resume and a new "
                         "one would overwrite it; choose another --out, or move the file away")
    if resume and not (out / "latest.pth").exists() and rank == 0:  # a requeued job may always pass --resume
        print(f"ssl-seg {mode}: no run in {out} to resume (no latest.pth); starting a new one", file=sys.stderr)
    return cfg, rank, world, device


def on_device(batch: dict | None, device) -> dict | None:
    """A DataLoader batch on the device, images as floats in [0, 1]."""
    if batch is None:
        return None
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items() if torch.is_tensor(value)}
    moved["image"] = moved["image"].float().div_(255)
    return moved


def log_step(writer, run: Run, done: int, loss, logs: dict, timer: StepTimer, window: dict, device) -> None:
    elapsed = time.perf_counter() - window["start"]
    writer.add_scalar("train/loss", loss.item(), done)
    for name, value in logs.items():
        writer.add_scalar(f"train/{name}", float(value), done)
    writer.add_scalar("train/lr", run.scheduler.get_last_lr()[-1], done)
    writer.add_scalar("train/images_per_s", window["images"] / max(elapsed, 1e-9), done)
    if device.type == "cuda":
        writer.add_scalar("train/peak_memory_gib", torch.cuda.max_memory_allocated(device) / 2**30, done)
    for name, seconds in timer.reset().items():
        writer.add_scalar(f"time/{name}_s_per_step", seconds / window["steps"], done)
    window.update(start=time.perf_counter(), images=0, steps=0)


def validate_and_save(run: Run, sets: TrainingSets, done: int, writer, bar, device, images_cache: dict) -> dict:
    """Validation metrics (the EMA teacher's too in ``pretrain``), example panels, best.pth and latest.pth."""
    cfg, summary = run.cfg, {}
    if sets.val:
        summary, examples = evaluate_model(run.model, sets.val, cfg, device, images_cache)
        log_summary(writer, "eval", summary, done)
        if run.mode == "pretrain":
            teacher_summary, _ = evaluate_model(run.ema.module, sets.val, cfg, device, images_cache)
            log_summary(writer, "eval_teacher", teacher_summary, done)
        if done % cfg.image_every == 0 or done == cfg.steps:
            for i, (image, truth, pred) in enumerate(examples):
                writer.add_image(f"eval/panel_{i}", panel(image, truth, pred), done, dataformats="HWC")
        score = summary["micro_jaccard_macerals"]
        if score > run.best_score:
            run.best_score, run.best_step = score, done
            save_checkpoint(run.best, run.state(done))
        bar.write(f"step {done}: eval micro Jaccard (macerals) {score:.4f}, best {run.best_score:.4f} @ {run.best_step}")
    save_checkpoint(run.latest, run.state(done))
    if not sets.val:  # without validation the latest model is the one to use
        save_checkpoint(run.best, run.state(done))
    writer.flush()
    return summary


def any_rank(flag: bool, world: int, device) -> bool:
    """Whether ``flag`` is true on any rank: a signal to one stops them all after the same step."""
    if world == 1:
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def train(cfg: TrainConfig, data: str | Path, out: str | Path, mode: str = "finetune", resume: bool = False,
          progress: bool = True, stop_after: int | None = None) -> dict:
    """Train and return the final validation summary (empty without validation images).

    ``stop_after`` ends this invocation after that many steps, saving ``latest.pth`` so that
    ``resume=True`` continues exactly (time-limited cluster jobs).
    """
    out = Path(out)
    cfg, rank, world, device = prepare(cfg, out, mode, resume, stop_after)
    sets = training_sets(cfg, data, mode, say=rank == 0)
    n_labeled, n_unlabeled = (cfg.batch_size, 0) if mode == "finetune" else batch_split(cfg.batch_size, cfg.labeled_ratio)
    run = start_run(cfg, mode, out, sets, resume, device, rank)
    cfg, start = run.cfg, run.start_step
    pixel_counts = sets.pixel_counts()
    criterion = SegmentationLoss(class_weights(pixel_counts, cfg.class_weights), cfg.dice_weight).to(device)
    timer = StepTimer(device)
    prior = torch.as_tensor(pixel_counts + 1, dtype=torch.float32)  # +1: a class no label shows is not ruled out
    context = StepContext(cfg, device, TrainAugment(student_jitter=cfg.student_jitter).to(device), criterion, timer,
                          n_labeled, prior / prior.sum())
    method = Supervised(context) if not n_unlabeled else method_for(mode, context)
    method.load_state_dict(run.method_state)
    run.method = method
    net = method.network(run.model)
    net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net
    net = torch.compile(net) if cfg.compile else net
    # decoded now: an unreadable validation image stops the run before its first step, not at its first validation
    images_cache = {s.id: (read_image(s.image), s.read_mask()) for s in sets.val} if rank == 0 else {}
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=mode,
               disable=not progress or rank != 0, dynamic_ncols=True)
    summary, done, signalled, window = {}, start, False, {"start": time.perf_counter(), "images": 0, "steps": 0}
    saved = start
    run.model.train()
    # events logged after the checkpoint (steps > start) are dropped: the resumed run writes them again
    logs_to = summary_writer(out / "tb", purge_step=start + 1) if rank == 0 else contextlib.nullcontext()
    with logs_to as writer, stop_on_interrupt(distributed=world > 1) as interrupted, \
            workers_released_on_exit() as released:
        if writer is not None and start == 0:
            writer.add_text("config", "```\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False) + "\n```", 0)
            writer.add_text("data", sets.index.summary(), 0)
        loaders = [crop_batches(samples, cfg, per_step, start, pseudo, rank, world, device.type == "cuda", released)
                   if per_step else None
                   for samples, per_step, pseudo in ((sets.labeled, n_labeled, False), (sets.unlabeled, n_unlabeled, True))]
        for step in bar:
            # Every random draw of a step (augmentation, CutMix, dropout) comes from this seed: exact resume.
            torch.manual_seed(cfg.seed * 1_000_003 + step * 101 + rank)
            try:
                with timer("data"):
                    batch_x, batch_u = (on_device(next(it), device) if it else None for it in loaders)
            except DataError as exc:  # an image or pseudo mask that only now turns out unreadable: keep the steps
                if rank == 0 and done > start:
                    if done > saved:
                        save_checkpoint(run.latest, run.state(done))
                    raise DataError(f"{one_line(exc)} (steps up to {done} are saved in {run.latest}: fix or remove "
                                    "that file, then add --resume to the same command)") from None
                raise
            logging = writer is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps)
            loss, logs = method.step(batch_x, batch_u, net, run.ema.module, step, logging)
            with timer("compute"):
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                run.optimizer.step()
                run.scheduler.step()
                run.ema.update_parameters(run.model)
            window.update(images=window["images"] + cfg.batch_size * world, steps=window["steps"] + 1)
            done = step + 1
            if logging:
                log_step(writer, run, done, loss, logs, timer, window, device)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            signalled = any_rank(bool(interrupted), world, device)
            stopping = (stop_after is not None and done - start >= stop_after) or signalled
            validating = done % cfg.val_every == 0 or done == cfg.steps
            if rank == 0 and validating:
                summary, saved = validate_and_save(run, sets, done, writer, bar, device, images_cache), done
            elif rank == 0 and stopping:
                save_checkpoint(run.latest, run.state(done))
                saved = done
            if world > 1 and (validating or stopping):
                dist.barrier()  # no rank goes on (or exits) before the step is saved
            if stopping:
                break
    bar.close()
    if signalled and done < cfg.steps:
        raise TrainingInterrupted(done, run.latest)
    if rank == 0 and start == cfg.steps:
        print(f"{out} already finished all {cfg.steps} steps; nothing to do", file=sys.stderr)
    elif rank == 0 and done < cfg.steps:
        print(f"stopped at step {done} of {cfg.steps} (--stop-after {stop_after}); add --resume to the same "
              "command to continue", file=sys.stderr)
    return summary
