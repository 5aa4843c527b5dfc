"""What a run records about itself, and the checks that let ``--resume`` continue only the same run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

from ssl_seg.config import TrainConfig
from ssl_seg.data.layout import Sample
from ssl_seg.data.pseudo_labels import manifest_settings
from ssl_seg.errors import TrainError

# Settings that shape a run: resuming with other values would not continue the same run.
RUN_KEYS = ("steps", "batch_size", "tile_size", "lr", "weight_decay", "warmup_steps", "backbone_lr_scale",
            "class_weights", "dice_weight", "labeled_ratio", "consistency_weight", "consistency_threshold",
            "cutmix_prob", "student_jitter", "ema_decay", "val_fraction", "seed", "binary_class", "method",
            "rampup_fraction", "feature_dropout", "unimatch_teacher", "copy_paste_box", "copy_paste_warmup",
            "copy_paste_unlabeled_weight", "class_thresholds", "oracle_pseudo_labels", "distribution_alignment")
# What checkpoints written before a key existed were trained with.
RUN_KEY_BEFORE = {"student_jitter": "strong", "method": "mean_teacher", "rampup_fraction": 0.0,
                  "feature_dropout": 0.5, "unimatch_teacher": "ema", "copy_paste_box": 2 / 3,
                  "copy_paste_warmup": 0.25, "copy_paste_unlabeled_weight": 0.5, "class_thresholds": "fixed",
                  "oracle_pseudo_labels": False, "distribution_alignment": "none"}


def samples_identity(labeled: list[Sample], val: list[Sample], unlabeled: list[Sample], pseudo_dir: str | None) -> dict:
    """What a run trains on, compared on resume: image counts and a digest of the ids (and of the
    pseudo-labels' teacher and settings), so that a moved folder still resumes but other data does not."""
    digest = hashlib.sha256()
    for name, samples in (("labeled", labeled), ("val", val), ("unlabeled", unlabeled)):
        digest.update(name.encode() + b"\0" + "\0".join(sorted(s.id for s in samples)).encode() + b"\0")
    if pseudo_dir is not None:
        digest.update(json.dumps(manifest_settings(Path(pseudo_dir)), sort_keys=True).encode())
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


def _changed_samples(before: dict, samples: dict) -> str:
    if before["pseudo_labels"] != samples["pseudo_labels"]:
        return ("pseudo-labels " + ("on" if before["pseudo_labels"] else "off (online only)")
                + f" (now {'on' if samples['pseudo_labels'] else 'off'})")
    then, now = (", ".join(f"{k} {ids[k]}" for k in ("labeled", "val", "unlabeled")) for ids in (before, samples))
    if then == now:  # the same numbers: files or pseudo-label settings differ
        return (f"other image files or other pseudo-labels (a folder of another teacher or other "
                f"pseudo-label settings; the counts match: {now})")
    return f"other images or pseudo-labels ({then}; now {now})"


def check_resumable(state: dict, cfg: TrainConfig, mode: str, latest: Path, samples: dict | None = None) -> None:
    """Refuse to resume ``latest`` under another command, with settings that change the run, or on other data."""
    if state.get("mode") != mode:
        raise TrainError(f"{latest} is a {state.get('mode')} run; resume it with that command")
    saved = {**RUN_KEY_BEFORE, **state.get("config", {})}
    changed = [f"{key} {saved[key]} (now {getattr(cfg, key)})" for key in RUN_KEYS
               if key in saved and saved[key] != getattr(cfg, key)]
    before = state.get("samples")  # absent in checkpoints of ssl_seg 0.1.3 and earlier
    if samples is not None and before is not None and before != samples:
        changed.append(_changed_samples(before, samples))
    if changed:
        raise TrainError(f"{latest} was trained with {', '.join(changed)}; resume with the run's "
                         "own settings and data (flags and --config left out keep them), or start another --out")
