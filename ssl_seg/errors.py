"""The user-facing error types, in one place.

Every one is a ``ValueError`` whose message is one line naming the file or setting and the fix; the CLI
prints it as ``ssl-seg <command>: error: <message>`` and exits 2.
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A user's input file or folder is unusable; the message names it, what was found and the fix."""


class TrainError(ValueError):
    """The run cannot start as asked; the message says how to fix it."""


class CheckpointError(ValueError):
    """A checkpoint file is missing or not one of ours."""


class ModelLoadError(ValueError):
    """A model or its weights could not be found; the message says how to get them."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after a finished step whose state is saved in ``latest.pth``."""

    def __init__(self, step: int, latest: Path):
        super().__init__(f"stopped after step {step}, saved in {latest}")
        self.step, self.latest = step, latest


def one_line(exc: BaseException) -> str:
    """The message of ``exc``; for one re-raised from a DataLoader worker, the worker's own message."""
    text = str(exc)
    if "Original Traceback" in text:  # torch prefixes the worker's whole traceback; its last line is the message
        last = text.rstrip().splitlines()[-1]
        text = last.split(f"{type(exc).__name__}: ", 1)[-1]
    return text
