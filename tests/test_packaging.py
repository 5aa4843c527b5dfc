"""What `pip install .` (not only `pip install -e .`) puts in the wheel.

setup.cfg's ``packages = find:`` takes only folders with an ``__init__.py``; an editable install
hides a missing one, a wheel drops the folder.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_folder_is_a_package():
    folders = [p for p in (ROOT / "ssl_seg").rglob("*") if p.is_dir() and any(p.glob("*.py"))]
    assert {p.name for p in folders} >= {"data", "models", "pseudo", "report", "train"}
    missing = [str(p.relative_to(ROOT)) for p in folders if not (p / "__init__.py").is_file()]
    assert not missing, f"no __init__.py, so left out of the wheel: {missing}"
