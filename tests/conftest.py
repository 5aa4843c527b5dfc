from pathlib import Path

import pytest

# the script that wrote the 0.1.10 checkpoint fixture runs against that version, not under pytest
collect_ignore = ["fixtures"]

# Real images live beside the checkout (../shared/data/real) and are never committed.
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture
def real_data() -> Path:
    """The folder of real domain images; skips the test cleanly when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent")
    return REAL_DATA


def at_third_step(action):
    """A TrainAugment whose third call (the third training step) runs ``action()`` first: the moment a test
    sends a signal, or marks that the loop is running."""
    from ssl_seg.train import loop as trainer

    class AtThirdStep(trainer.TrainAugment):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            geometric, calls = self.geometric, []
            del self.geometric

            def run_action_at_third_step(*args):
                calls.append(1)
                if len(calls) == 3:
                    action()
                return geometric(*args)

            self.geometric = run_action_at_third_step

    return AtThirdStep


# The CLI, leaving a mark in $MARKS when the process (rank $RANK under torchrun) starts its third training
# step; with $SIGNAL set, rank $SIGNAL_RANK then sends that signal to its own process group.
MARK_THIRD_STEP = f"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from conftest import at_third_step
from ssl_seg import cli
from ssl_seg.train import loop as trainer


def mark():
    rank = os.environ.get("RANK", "0")
    Path(os.environ["MARKS"], "rank" + rank).touch()
    if os.environ.get("SIGNAL") and rank == os.environ["SIGNAL_RANK"]:
        os.killpg(os.getpgid(0), getattr(signal, os.environ["SIGNAL"]))


trainer.TrainAugment = at_third_step(mark)
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture
def mark_third_step(tmp_path) -> tuple[Path, Path]:
    """(script, marks folder): run the script like ``python -m ssl_seg``, wait for a mark, then signal it."""
    script, marks = tmp_path / "mark_third_step.py", tmp_path / "marks"
    script.write_text(MARK_THIRD_STEP)
    marks.mkdir()
    return script, marks
