"""Training methods: how one step turns a labeled and an unlabeled batch into a loss.

A method is one file here and one registry line below. It is built once per run with a ``StepContext``
and called once per step::

    loss, logs = method.step(batch_x, batch_u, net, teacher, step, logging)

``batch_x`` / ``batch_u`` are the labeled and unlabeled crops on the device (``None`` when the step has
none), ``net`` the trained network (``method.network(model)``, wrapped for DDP / compile by the loop),
``teacher`` the EMA model in eval mode. ``logs`` are scalars for ``train/<name>`` in TensorBoard; ``logging`` asks for the costlier ones too.
"""

from __future__ import annotations

from ssl_seg.train.methods.base import StepContext, StepTimer
from ssl_seg.train.methods.copy_paste import CopyPaste
from ssl_seg.train.methods.mean_teacher import MeanTeacher
from ssl_seg.train.methods.supervised import Supervised
from ssl_seg.train.methods.unimatch import UniMatch

# ``method`` of ``pretrain`` -> its class (config.py lists the same names as the key's choices)
METHODS = {"mean_teacher": MeanTeacher, "unimatch": UniMatch, "copy_paste": CopyPaste}


def method_for(mode: str, context: StepContext):
    """``finetune`` trains supervised; ``pretrain`` runs the configured ``method``."""
    return Supervised(context) if mode == "finetune" else METHODS[context.cfg.method](context)


__all__ = ["METHODS", "StepContext", "StepTimer", "method_for"]
