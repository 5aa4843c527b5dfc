"""Configuration: flat dataclasses (training, pseudo-labelling), read from YAML, overridden by flags and
``--set``. Each field is declared once, with its help and the values it takes (``setting``): argparse
flags and ``check_config`` both read that declaration.

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


def setting(default, help: str = "", check=None, wanted: str = "", choices: tuple | None = None,
            flag: str | None = None):
    """A config field declared once: its default, help, and what values it takes (``choices``, or ``check``
    with the words ``wanted`` for the error). ``flag`` ("train" or "pretrain") also makes it a command-line
    flag of those commands, ``--name-with-dashes``."""
    if choices is not None:
        check, wanted = (lambda v: v in choices), " or ".join(", ".join(map(str, choices)).rsplit(", ", 1))
    metadata = {"help": help, "check": check, "wanted": wanted, "choices": choices, "flag": flag}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _at_least(n):
    return lambda v: v >= n


_POSITIVE, _NON_NEGATIVE, _UNIT = (lambda v: v > 0), (lambda v: v >= 0), (lambda v: 0 <= v <= 1)
TTA_VIEWS = (1, 2, 8)


@dataclass
class TrainConfig:
    """Every setting of ``finetune`` and ``pretrain``; flat, like the YAML files."""

    # what is trained
    model: str = setting("segformer-tiny", "a registered model, e.g. segformer-tiny or unet-small (an unknown name "
                         "lists them all; README, Models)", flag="train")
    pretrained: str | None = setting(None, "hub id or local folder of backbone weights", flag="train")
    local_files_only: bool = setting(False, "never reach the hub; load --pretrained from the local cache or folder",
                                     flag="train")
    init: str | None = setting(None, "checkpoint whose model weights start this run", flag="train")
    # schedule
    steps: int = setting(600, "optimizer steps", _at_least(1), "at least 1", flag="train")
    batch_size: int = setting(8, "crops per step", _at_least(1), "at least 1", flag="train")
    tile_size: int = setting(256, "training crop size in pixels", _at_least(32), "at least 32 pixels", flag="train")
    lr: float = setting(6e-4, "peak learning rate, cosine schedule", _POSITIVE, "positive", flag="train")
    weight_decay: float = setting(0.01, "AdamW weight decay", _NON_NEGATIVE, "0 or more")
    warmup_steps: int = setting(50, "linear warm-up steps", _NON_NEGATIVE, "0 or more")
    backbone_lr_scale: float = setting(0.1, "learning rate of a pretrained DINOv2 backbone relative to the head",
                                       _POSITIVE, "positive")
    # loss
    class_weights: str = setting("inverse_sqrt", "class weights of the loss, from labeled pixel frequencies",
                                 choices=("inverse_sqrt", "inverse", "none"))
    dice_weight: float = setting(0.5, "weight of Dice next to cross-entropy", _NON_NEGATIVE, "0 or more")
    # semi-supervised pretraining (``pretrain``)
    pseudo_labels: str | None = setting(None, "folder written by `ssl-seg pseudo-label`; without it the unlabeled "
                                        "images of --data are learned online, through the method's consistency "
                                        "alone", flag="pretrain")
    labeled_ratio: float = setting(0.25, "share of each batch drawn from the labeled masks", _UNIT, "in [0, 1]",
                                   flag="pretrain")
    method: str = setting("mean_teacher", "semi-supervised method of pretrain (ssl_seg/train/methods/)",
                          choices=("mean_teacher", "unimatch", "copy_paste"), flag="pretrain")
    consistency_weight: float = setting(1.0, "weight of the unlabeled consistency losses", _NON_NEGATIVE, "0 or more")
    consistency_threshold: float = setting(0.9, "teacher confidence below which unlabeled pixels are left out",
                                           _UNIT, "in [0, 1]")
    cutmix_prob: float = setting(0.5, "probability of a CutMix box in each unlabeled crop", _UNIT, "in [0, 1]")
    # weak scored higher on the procedural benchmark (experiments/RESULTS.md, "student jitter")
    student_jitter: str = setting("weak", "colour jitter of the student's (strong) views of unlabeled crops",
                                  choices=("strong", "weak"))
    ema_decay: float = setting(0.99, "decay of the EMA teacher", lambda v: 0 <= v < 1, "in [0, 1)")
    rampup_fraction: float = setting(0.0, "share of the steps over which unlabeled losses ramp up (sigmoid)",
                                     _UNIT, "in [0, 1]")
    feature_dropout: float = setting(0.5, "unimatch: Dropout2d between encoder and decoder",
                                     lambda v: 0 <= v < 1, "in [0, 1)")
    consistency_class_balance: float = setting(0.0, "unimatch: each class of the weak view keeps at least this "
                                               "share of its most confident pixels, below the threshold if need be",
                                               _UNIT, "in [0, 1]")
    unimatch_teacher: str = setting("ema", "unimatch: whose weak-view prediction labels the strong views",
                                    choices=("ema", "own"))
    copy_paste_box: float = setting(2 / 3, "copy_paste: side of the pasted box, as a share of the crop's sides",
                                    lambda v: 0 < v < 1, "in (0, 1)")
    copy_paste_warmup: float = setting(0.25, "copy_paste: share of the steps that paste labeled crops into each "
                                       "other only, before the teacher's pseudo-labels are used", _UNIT, "in [0, 1]")
    copy_paste_unlabeled_weight: float = setting(0.5, "copy_paste: loss weight of a pseudo-labeled pixel "
                                                 "(a labeled one weighs 1)", _NON_NEGATIVE, "0 or more")
    class_thresholds: str = setting("fixed", "unimatch, copy_paste: teacher_mean lowers each class's threshold to "
                                    "the teacher's mean confidence on it in the batch while that is below "
                                    "consistency_threshold; class_share keeps the same share of each predicted class's "
                                    "pixels (its most confident), the share consistency_threshold keeps of all",
                                    choices=("fixed", "teacher_mean", "class_share"))
    distribution_alignment: str = setting("none", "unimatch, copy_paste: mean scales the teacher's class "
                                          "probabilities by the labeled pixels' class shares over its running mean "
                                          "ones (ReMixMatch); kept biases them until each class's share of the kept "
                                          "pixels matches its labeled share", choices=("none", "mean", "kept"))
    oracle_pseudo_labels: bool = setting(False, "unimatch, copy_paste: the unlabeled crops' true masks take the "
                                         "teacher's place (procedural data with unlabeled_truth/; a diagnostic: "
                                         "the ceiling of any teacher)")
    # validation and logging
    val_fraction: float = setting(0.2, "share of the labeled images held out for validation",
                                  lambda v: 0 <= v < 1, "in [0, 1)")
    val_dir: str | None = setting(None, "a separate validation dataset (default: a seeded split of --data)",
                                  flag="train")
    val_every: int = setting(100, "steps between validations and checkpoints", _at_least(1), "at least 1")
    log_every: int = setting(10, "steps between TensorBoard scalars", _at_least(1), "at least 1")
    image_every: int = setting(200, "steps between TensorBoard example panels", _at_least(1), "at least 1")
    val_tta: int = setting(1, "flip/rot90 views averaged in validation", choices=TTA_VIEWS)
    # machinery
    seed: int = setting(0, "seed of the split, crops and augmentation", flag="train")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", flag="train")
    num_workers: int = setting(2, "DataLoader workers reading and cropping images", _NON_NEGATIVE, "0 or more",
                               flag="train")
    amp: bool = setting(True, "bf16 autocast on CUDA")
    channels_last: bool = setting(False, "channels-last memory format")
    compile: bool = setting(False, "torch.compile the network")
    binary_class: str | None = setting(None, "class of 0/255 binary masks in the labels folder, e.g. liptinite",
                                       flag="train")
    extra: dict = setting({}, "free-form keys for experiments")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PseudoLabelConfig:
    """Every setting of ``pseudo-label``; may share a YAML file with ``TrainConfig``."""

    refine: str = setting("none", "snap labels to image boundaries", choices=("none", "superpixel", "sam"))
    sam: str | None = setting(None, "SAM hub id or local folder, with refine: sam")
    superpixel_method: str = setting("slic", "superpixel algorithm of refine: superpixel",
                                     choices=("slic", "felzenszwalb"))
    dinov2_features: str | None = setting(None, "DINOv2 hub id or folder: feature teacher fitted on --labeled")
    pseudo_threshold: float = setting(0.9, "confidence below which pixels are ignored (255)", _UNIT, "in [0, 1]")
    pseudo_class_balance: float = setting(0.0, "each predicted class keeps at least this share of its most "
                                          "confident pixels (0: off)", _UNIT, "in [0, 1]")
    tta: int = setting(1, "flip/rot90 views averaged", choices=TTA_VIEWS)
    infer_tile_size: int = setting(512, "sliding-window tile in pixels", _at_least(32), "at least 32 pixels")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    local_files_only: bool = setting(False, "never reach the hub")
    binary_class: str | None = setting(None, "class of 0/255 binary masks in the --labeled dataset")

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


def _sibling_keys(cls) -> set[str]:
    """Keys of the other config of a shared YAML file (TrainConfig <-> PseudoLabelConfig), not of ``cls``."""
    pair = {TrainConfig: PseudoLabelConfig, PseudoLabelConfig: TrainConfig}
    if cls not in pair:
        return set()
    own = {f.name for f in dataclasses.fields(cls)}
    return {f.name for f in dataclasses.fields(pair[cls])} - own


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
        # a YAML file of a project holds training and pseudo-labelling keys: each command reads its own
        siblings = _sibling_keys(type(cfg))
        data = {key: value for key, value in data.items() if str(key).replace("-", "_") not in siblings}
        try:
            cfg = apply_overrides(cfg, data, what)
        except ValueError as error:
            raise ValueError(f"config file {path}: {error}") from None
    if overrides:
        cfg = apply_overrides(cfg, overrides, what)
    return cfg


def check_config(cfg):
    """Refuse values no run can use (ValueError naming the key), as each field declares; returns ``cfg``.
    Checked before a run writes anything: a bad value fails in a second, not after hours of training.

    >>> check_config(TrainConfig(val_every=0))
    Traceback (most recent call last):
    ...
    ValueError: config key 'val_every' must be at least 1, got 0; fix it in --set, the flags or the YAML
    """
    for spec in dataclasses.fields(cfg):
        check, value = spec.metadata.get("check"), getattr(cfg, spec.name)
        if check is not None and not check(value):
            raise ValueError(f"config key '{spec.name}' must be {spec.metadata['wanted']}, got {value!r}; "
                             "fix it in --set, the flags or the YAML")
    return cfg
