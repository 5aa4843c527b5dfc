from pathlib import Path

import pytest

# Real images live beside the checkout (../shared/data/real) and are never committed.
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture
def real_data() -> Path:
    """The folder of real domain images; skips the test cleanly when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent")
    return REAL_DATA
