"""The model protocol and the registries every model family and model name join with one decorator.

A family is a ``Segmenter`` class (one file in ``ssl_seg/models/``); a model name is a builder of one
configuration of a family (``segformer-tiny``). Checkpoints record the family and the family's
``spec()``, so that ``model_from_spec`` rebuilds any registered family offline.

Example:
    >>> sorted(MODEL_BUILDERS)[:2], "segformer" in FAMILIES
    (['dinov2', 'dinov2-tiny'], True)
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from ssl_seg import NUM_CLASSES
from ssl_seg.errors import ModelLoadError


@runtime_checkable
class Segmenter(Protocol):
    """Images in [0, 1] (B, 3, H, W) -> logits (B, C, H, W), split where a method perturbs features.

    ``forward(x)`` equals ``decode(encode(x), x.shape[-2:])``; ``encode`` returns a tensor or a tuple of
    tensors (B, C_i, H_i, W_i), the features ``decode`` takes.
    """

    family: str
    num_classes: int

    def encode(self, images: torch.Tensor) -> Any: ...

    def decode(self, features: Any, size: tuple[int, int]) -> torch.Tensor: ...

    def forward(self, images: torch.Tensor) -> torch.Tensor: ...

    def parameter_groups(self, lr: float, backbone_lr_scale: float = 0.1) -> list[dict]: ...

    def spec(self) -> dict: ...

    @classmethod
    def from_spec(cls, spec: dict) -> nn.Module: ...


FAMILIES: dict[str, type] = {}
MODEL_BUILDERS: dict[str, Callable[[int, str | None, bool], nn.Module]] = {}


def register_family(name: str):
    """Class decorator: a ``Segmenter`` that checkpoints name ``name`` and ``model_from_spec`` rebuilds."""

    def register(cls: type) -> type:
        if name in FAMILIES:
            raise ValueError(f"model family {name!r} is registered twice")
        cls.family = name
        FAMILIES[name] = cls
        return cls

    return register


def register_model(name: str):
    """Function decorator: ``builder(num_classes, pretrained, local_files_only)`` becomes ``--model name``."""

    def register(builder: Callable) -> Callable:
        if name in MODEL_BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        MODEL_BUILDERS[name] = builder
        return builder

    return register


def encoder_parameter_groups(model: nn.Module, encoder: nn.Module, lr: float, backbone_lr_scale: float) -> list[dict]:
    """A lower learning rate for a pretrained ``encoder`` than for the rest of ``model`` (the fresh head)."""
    inside = {id(p) for p in encoder.parameters()}
    return [{"params": list(encoder.parameters()), "lr": lr * backbone_lr_scale},
            {"params": [p for p in model.parameters() if id(p) not in inside], "lr": lr}]


def build_model(name: str, num_classes: int = NUM_CLASSES, pretrained: str | None = None, local_files_only: bool = False):
    """Build a registered model; ``pretrained`` is a hub id or a local ``save_pretrained`` folder."""
    if name not in MODEL_BUILDERS:
        raise ModelLoadError(f"unknown model '{name}'; choose one of: {', '.join(sorted(MODEL_BUILDERS))}")
    return MODEL_BUILDERS[name](num_classes, pretrained, local_files_only)


def model_spec(model: nn.Module) -> dict:
    """What a checkpoint needs to rebuild ``model`` offline: its family and the family's own spec."""
    family = getattr(type(model), "family", None)
    if FAMILIES.get(family) is not type(model):
        raise ModelLoadError(f"{type(model).__name__} is not a registered model family; "
                             "decorate it with @register_family(name) in ssl_seg/models/")
    return {"family": family, **model.spec()}


def model_from_spec(spec: dict) -> nn.Module:
    """Rebuild an untrained model of the same shape as the one ``spec`` describes (no download)."""
    family = spec.get("family")
    if family not in FAMILIES:
        raise ModelLoadError(f"model family {family!r} is not known to this ssl_seg (known: "
                             f"{', '.join(sorted(FAMILIES))}); install the version or plug-in that wrote it")
    return FAMILIES[family].from_spec(spec)
