"""Checkpoints: plain dicts of tensors and primitives, loadable with ``weights_only=True``."""

from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path

import torch

from ssl_seg.data.io import atomic_write
from ssl_seg.errors import CheckpointError
from ssl_seg.models import model_from_spec


def state_bytes(state) -> int:
    """Bytes of the tensors in a (nested) checkpoint dict: about the size of its file."""
    if isinstance(state, torch.Tensor):
        return state.nelement() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write atomically: a crash or a full disk mid-write leaves the previous file intact.

    torch reports a failed write (a full disk, a vanished folder) as ``RuntimeError`` ("unexpected pos"),
    not ``OSError``: both become one CheckpointError naming the file and the space it needs.
    """
    path = Path(path)
    try:
        with atomic_write(path) as tmp:
            torch.save(state, tmp)
    except (RuntimeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise  # permissions, a file where a folder goes: the CLI's OSError line names them
        if isinstance(exc, RuntimeError) and "unexpected pos" not in str(exc) and "write" not in str(exc).lower():
            raise  # not a failed write
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MB free there"
        except OSError:
            free = "its folder cannot be read"
        raise CheckpointError(f"cannot write checkpoint {path} (about {state_bytes(state) / 2**20:.0f} MB needed, "
                              f"{free}): free space on that disk, then add --resume to the same command; "
                              "the previous checkpoint is intact") from exc


def checkpoint_file(path: str | Path) -> Path:
    """The .pth file that ``path`` names: itself, or a run folder's best.pth (else latest.pth)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pth", "latest.pth"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path} is a folder without best.pth or latest.pth; pass a run folder (the --out "
                                  "of finetune or pretrain) or a .pth file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass a .pth file or a run folder holding best.pth")
    return path


def file_sha256(path: str | Path) -> str:
    """Hex digest of a file's bytes: identifies a checkpoint wherever it is copied."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """The checkpoint's dict; ``mmap=True`` maps the tensors instead of reading them (to look at its config)."""
    path = checkpoint_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}); "
                              "was it written by ssl-seg and fully copied?") from exc
    if not isinstance(state, dict) or "model" not in state or "model_spec" not in state:
        raise CheckpointError(f"checkpoint {path} holds no ssl-seg model; pass latest.pth or best.pth of a run")
    return state


def model_from_checkpoint(state: dict, path: str | Path) -> torch.nn.Module:
    """The model of a loaded checkpoint, with its weights; CheckpointError when they do not fit together."""
    try:
        model = model_from_spec(state["model_spec"])
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # a hand-edited or mixed-up file
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the model it describes ({detail}); "
                              "pass latest.pth or best.pth as ssl-seg wrote them") from None
    return model


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the trained model of a checkpoint (no download needed) in eval mode."""
    state = load_checkpoint(path)
    return model_from_checkpoint(state, path).to(device).eval(), state
