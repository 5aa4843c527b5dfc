"""Checkpoints: plain dicts of tensors and primitives, loadable with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_seg.data.io import atomic_write
from ssl_seg.models import model_from_spec


class CheckpointError(ValueError):
    """A checkpoint file is missing or not one of ours."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        for name in ("best.pth", "latest.pth"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass a .pth file or a run folder holding best.pth")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}); "
                              "was it written by ssl-seg and fully copied?") from exc
    if not isinstance(state, dict) or "model" not in state or "model_spec" not in state:
        raise CheckpointError(f"checkpoint {path} holds no ssl-seg model; pass latest.pth or best.pth of a run")
    return state


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the trained model of a checkpoint (no download needed) in eval mode."""
    state = load_checkpoint(path)
    model = model_from_spec(state["model_spec"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state
