"""Training configuration: one flat dataclass, read from YAML, overridden by flags and ``--set``.

Example:
    >>> cfg = TrainConfig()
    >>> cfg = apply_overrides(cfg, ["steps=10", "lr=1e-3", "model=dinov2-tiny"])
    >>> cfg.steps, cfg.lr, cfg.model
    (10, 0.001, 'dinov2-tiny')
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    """Every setting of the loop (fine-tune, pseudo-label, pretrain); flat, like the YAML files."""

    # what is trained
    model: str = "segformer-tiny"
    pretrained: str | None = None          # hub id or local folder for the backbone weights
    local_files_only: bool = False
    init: str | None = None                # checkpoint whose model weights start this run
    # schedule
    steps: int = 600
    batch_size: int = 8
    tile_size: int = 256
    lr: float = 6e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    backbone_lr_scale: float = 0.1         # pretrained DINOv2 backbones learn slower than the head
    # loss
    class_weights: str = "inverse_sqrt"    # inverse_sqrt | inverse | none: from labeled pixel frequencies
    dice_weight: float = 0.5
    # semi-supervised pretraining (``pretrain`` command)
    pseudo_labels: str | None = None       # folder written by ``pseudo-label``
    labeled_ratio: float = 0.25            # share of each batch drawn from the labeled masks
    consistency_weight: float = 1.0
    consistency_threshold: float = 0.9     # EMA-teacher confidence below which pixels are left out
    cutmix_prob: float = 0.5
    # strong | weak: colour jitter of the student's (strong) views of unlabeled crops; weak scored higher
    # on the procedural benchmark (experiments/RESULTS.md, "student jitter")
    student_jitter: str = "weak"
    ema_decay: float = 0.99
    method: str = "mean_teacher"           # mean_teacher | unimatch: pretrain's semi-supervised method
    rampup_fraction: float = 0.0           # share of the steps over which unlabeled losses ramp up
    feature_dropout: float = 0.5           # unimatch: Dropout2d between encoder and decoder
    unimatch_teacher: str = "ema"          # unimatch: ema | own, whose weak-view prediction labels the strong views
    # pseudo-labelling (``pseudo-label`` command)
    refine: str = "none"                   # none | superpixel | sam (superpixels lowered the benchmark's pseudo-labels)
    sam: str | None = None                 # SAM hub id or local folder, with refine: sam
    superpixel_method: str = "slic"        # slic | felzenszwalb, with refine: superpixel
    dinov2_features: str | None = None     # DINOv2 hub id or folder: feature teacher on the labeled masks
    pseudo_threshold: float = 0.9          # confidence below which pseudo-label pixels are ignored
    pseudo_class_balance: float = 0.0      # each class keeps at least this share of its pixels (0: off)
    tta: int = 1                           # 1 | 2 | 8 flip/rot90 views at inference
    infer_tile_size: int = 512             # sliding-window tile for prediction and pseudo-labelling
    # validation and logging
    val_fraction: float = 0.2
    val_dir: str | None = None             # a separate validation set (same layouts as --data)
    val_every: int = 100
    log_every: int = 10
    image_every: int = 200
    val_tta: int = 1
    # machinery
    seed: int = 0
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    num_workers: int = 2
    amp: bool = True                       # bf16 autocast on CUDA
    channels_last: bool = False
    compile: bool = False
    binary_class: str | None = None        # class of 0/255 binary masks in the labels folder
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parse_value(text: str, current):
    """Parse an override string into the type of the field it replaces; TypeError if it cannot."""
    value = yaml.safe_load(text) if isinstance(text, str) else text
    if isinstance(current, tuple):  # sizes such as (192, 256): a YAML list
        if not isinstance(value, (list, tuple)) or len(value) != len(current):
            raise TypeError(f"not a list of {len(current)}")
        return tuple(type(item)(v) for item, v in zip(current, value))
    if isinstance(current, (dict, list)):
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise TypeError("not true or false")
        return value
    if isinstance(value, bool):  # yaml reads yes/no/on/off as booleans; no number or name is one
        raise TypeError("a boolean")
    if isinstance(current, float):
        return float(value)  # YAML 1.1 reads "1e-3" as text
    if isinstance(current, int):
        if not isinstance(value, int):
            raise TypeError("not an integer")
        return value
    # str fields, and the optional str fields that default to None (paths, hub ids)
    return None if value is None else str(value)


def _type_name(current) -> str:
    if isinstance(current, bool):
        return "true or false"
    if isinstance(current, tuple):
        return f"a list of {len(current)}"
    return {int: "an integer", float: "a number", dict: "a mapping", list: "a list"}.get(type(current), "a string")


def apply_overrides(cfg, overrides: list[str] | dict, what: str = "config"):
    """Apply ``key=value`` strings (or a dict) to a config dataclass; unknown keys are an error naming ``what``
    (the kind of config: ``config``, ``demo``)."""
    items = overrides.items() if isinstance(overrides, dict) else (o.split("=", 1) for o in overrides)
    known = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for item in items:
        if len(item) != 2:
            raise ValueError(f"override {'='.join(item)!r} is not key=value")
        key, value = item
        key = key.strip().replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1) or [k for k in sorted(known) if k.endswith(f"_{key}")]
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown {what} key '{key}'; {hint}known keys: {', '.join(sorted(known))}")
        current = getattr(cfg, key)
        try:
            changes[key] = _parse_value(value, current)
        except (TypeError, ValueError):
            raise ValueError(f"{what} key '{key}' expects {_type_name(current)}, got {value!r}") from None
    return dataclasses.replace(cfg, **changes)


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                base=None, what: str = "config"):
    """``base`` (default: ``TrainConfig()``; any config dataclass), then the YAML file (flat ``key: value``),
    then overrides; errors name the kind of config, ``what``."""
    cfg = base if base is not None else TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} not found; pass a YAML from experiments/ or leave --config out")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ValueError(f"config file {path} is not valid YAML{line}; fix it or leave --config out") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a flat mapping of key: value")
        try:
            cfg = apply_overrides(cfg, data, what)
        except ValueError as error:
            raise ValueError(f"config file {path}: {error}") from None
    if overrides:
        cfg = apply_overrides(cfg, overrides, what)
    return cfg


# (key, test, what the value must be): checked before a run writes anything, so that a bad
# value fails in a second with one line instead of after hours of training.
_CHECKS = (
    ("steps", lambda v: v >= 1, "at least 1"),
    ("batch_size", lambda v: v >= 1, "at least 1"),
    ("tile_size", lambda v: v >= 32, "at least 32 pixels"),
    ("infer_tile_size", lambda v: v >= 32, "at least 32 pixels"),
    ("lr", lambda v: v > 0, "positive"),
    ("weight_decay", lambda v: v >= 0, "0 or more"),
    ("warmup_steps", lambda v: v >= 0, "0 or more"),
    ("backbone_lr_scale", lambda v: v > 0, "positive"),
    ("class_weights", lambda v: v in ("inverse_sqrt", "inverse", "none"), "inverse_sqrt, inverse or none"),
    ("dice_weight", lambda v: v >= 0, "0 or more"),
    ("labeled_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("consistency_weight", lambda v: v >= 0, "0 or more"),
    ("consistency_threshold", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("cutmix_prob", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("student_jitter", lambda v: v in ("strong", "weak"), "strong or weak"),
    ("ema_decay", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("method", lambda v: v in ("mean_teacher", "unimatch"), "mean_teacher or unimatch"),
    ("rampup_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("feature_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("unimatch_teacher", lambda v: v in ("ema", "own"), "ema or own"),
    ("refine", lambda v: v in ("none", "superpixel", "sam"), "none, superpixel or sam"),
    ("superpixel_method", lambda v: v in ("slic", "felzenszwalb"), "slic or felzenszwalb"),
    ("pseudo_threshold", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("pseudo_class_balance", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("tta", lambda v: v in (1, 2, 8), "1, 2 or 8"),
    ("val_tta", lambda v: v in (1, 2, 8), "1, 2 or 8"),
    ("val_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("val_every", lambda v: v >= 1, "at least 1"),
    ("log_every", lambda v: v >= 1, "at least 1"),
    ("image_every", lambda v: v >= 1, "at least 1"),
    ("num_workers", lambda v: v >= 0, "0 or more"),
)


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Refuse values no run can use (ValueError naming the key); returns ``cfg``.

    >>> check_config(TrainConfig(val_every=0))
    Traceback (most recent call last):
    ...
    ValueError: config key 'val_every' must be at least 1, got 0; fix it in --set, the flags or the YAML
    """
    for key, ok, wanted in _CHECKS:
        value = getattr(cfg, key)
        if not ok(value):
            raise ValueError(f"config key '{key}' must be {wanted}, got {value!r}; "
                             "fix it in --set, the flags or the YAML")
    return cfg
