"""TensorBoard helpers: metric scalars, overlay panels with a legend, confusion matrices."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ssl_seg import CLASS_NAMES, PALETTE
from ssl_seg.data.io import overlay


@contextlib.contextmanager
def summary_writer(folder: str | Path, **kwargs):
    """A ``SummaryWriter`` on ``folder``, closed however the block ends. A failed write (a full disk, a folder
    that cannot be written) is one ``OSError`` naming ``folder``: TensorBoard's writer thread would print its
    own traceback and hand the main thread an error without a path.

    >>> with summary_writer(tmp / "tb") as writer:  # doctest: +SKIP
    ...     writer.add_scalar("train/loss", 0.5, 1)
    """
    from torch.utils.tensorboard import SummaryWriter

    folder, failures, hook = Path(folder), [], threading.excepthook

    def quiet(args):  # the writer thread's failure reaches the main thread at its next write: say it once, there
        if type(args.thread).__name__ == "_AsyncWriterThread":
            failures.append(args.exc_value)
        else:
            hook(args)

    threading.excepthook = quiet
    writer = None
    try:
        writer = SummaryWriter(str(folder), **kwargs)
        yield writer
        writer.close()
    except OSError as exc:
        if writer is None or exc in failures or raised_in_tensorboard(exc):
            raise OSError(exc.errno, f"TensorBoard log cannot be written ({exc.strerror or exc})", str(folder)) from None
        raise
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):  # closed above, or the block failed: keep its error
                writer.close()
        threading.excepthook = hook


def raised_in_tensorboard(exc: BaseException) -> bool:
    frame = exc.__traceback__
    while frame is not None:
        if "tensorboard" in frame.tb_frame.f_code.co_filename:
            return True
        frame = frame.tb_next
    return False


def legend_strip(width: int, height: int = 18, ignored: bool = True) -> np.ndarray:
    """A white strip naming each class next to its overlay colour (and the grey of ignored pixels)."""
    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    x = 4
    for name, colour in zip(CLASS_NAMES[1:], PALETTE[1:]):
        draw.rectangle([x, 4, x + 10, 14], fill=tuple(colour))
        draw.text((x + 14, 3), name, fill="black")
        x += 14 + int(draw.textlength(name)) + 12
    if ignored:
        draw.text((x, 3), "grey: ignored", fill="grey")
    return np.asarray(strip)


def panel(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray, max_width: int = 960) -> np.ndarray:
    """input | truth overlay | prediction overlay, side by side, with a legend underneath (HxWx3 uint8)."""
    views = [image] + ([overlay(image, truth)] if truth is not None else []) + [overlay(image, prediction)]
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([v for view in views for v in (view, gap)][:-1], axis=1)
    if row.shape[1] > max_width:
        scale = max_width / row.shape[1]
        row = np.asarray(Image.fromarray(row).resize((max_width, max(1, round(row.shape[0] * scale)))))
    return np.concatenate([row, legend_strip(row.shape[1])], axis=0)


def confusion_figure(cm: np.ndarray, title: str = "confusion matrix (rows: truth)"):
    """A matplotlib figure of the row-normalised confusion matrix with counts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=100)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=30, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("prediction")
    ax.set_title(title, fontsize=9)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    fig.tight_layout()
    return fig


def log_summary(writer, prefix: str, summary: dict, step: int) -> None:
    """Scalars of a metrics summary under ``prefix/``: micro Jaccards, accuracy, per-class IoU and Dice."""
    for key, value in summary.items():
        if isinstance(value, (int, float)) and np.isfinite(value):
            writer.add_scalar(f"{prefix}/{key}", value, step)
    if "confusion_matrix" in summary:
        writer.add_figure(f"{prefix}/confusion_matrix", confusion_figure(summary["confusion_matrix"]), step)
