"""Loading Hugging Face models from a hub id or a local folder, with one-line errors."""

from __future__ import annotations

from pathlib import Path

from ssl_seg.errors import ModelLoadError


# family -> (config model types it accepts, an example hub id): transformers loads a folder of another
# family with random weights in place of the ones whose names differ, so the family is checked
FAMILIES = {
    "SAM": (("sam",), "facebook/sam-vit-base"),
    "DINOv2": (("dinov2", "dinov2_with_registers"), "facebook/dinov2-base"),
    "SegFormer": (("segformer",), "nvidia/mit-b5"),
}


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def load_pretrained(cls, name_or_dir: str, *, local_files_only: bool = False, family: str | None = None, **kwargs):
    """``cls.from_pretrained`` that turns "not found / offline" into one actionable line.

    ``family`` (a key of ``FAMILIES``) refuses, in one line, a model of another family.

    Example:
        >>> from transformers import Dinov2Model
        >>> load_pretrained(Dinov2Model, "/no/such/folder", local_files_only=True)
        Traceback (most recent call last):
        ...
        ssl_seg.errors.ModelLoadError: ...
    """
    looks_local = Path(name_or_dir).expanduser().exists() or name_or_dir.startswith((".", "/", "~"))
    if looks_local and not Path(name_or_dir).expanduser().is_dir():
        raise ModelLoadError(f"cannot load {cls.__name__}: '{name_or_dir}' is not a folder; pass the folder "
                             "written by save_pretrained() (config.json + weights) or a hub id")
    try:
        model = cls.from_pretrained(str(Path(name_or_dir).expanduser()) if looks_local else name_or_dir,
                                    local_files_only=local_files_only, **kwargs)
    # Besides OSError and ValueError, loaders raise their own types (a truncated safetensors file, a
    # config of another model family): every one becomes one line.
    except Exception as exc:
        if looks_local:
            fix = "check the folder holds config.json and the weights written by save_pretrained()"
        else:
            fix = (f"download it once where there is internet (`hf download {name_or_dir} --local-dir DIR`) "
                   "and pass that folder instead")
            if not (local_files_only or _hub_offline()):
                fix += " (offline, --local-files-only or HF_HUB_OFFLINE=1 skip the hub's retries)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load {cls.__name__} from '{name_or_dir}' ({first[:160]}); {fix}") from exc
    if family is not None and model.config.model_type not in FAMILIES[family][0]:
        raise ModelLoadError(f"{name_or_dir} holds a {model.config.model_type} model, not {family}: pass e.g. "
                             f"{FAMILIES[family][1]} or a folder saved from a {family} model")
    return model
