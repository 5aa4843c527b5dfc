"""ssl_seg: semi-supervised semantic segmentation of kerogen macerals."""

import os

# OpenMP threads that spin while waiting make CPU training ~10x slower as soon as another
# process (a DataLoader worker, a second job) wants a core. Takes effect if torch is not yet loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.4.2"

CLASS_NAMES = ("background", "inertinite", "vitrinite", "liptinite")
NUM_CLASSES = len(CLASS_NAMES)
# Pixels with this value in a mask carry no label: losses and metrics skip them.
IGNORE_INDEX = 255
# Overlay colours (RGB) per class: background left transparent in overlays.
PALETTE = ((0, 0, 0), (230, 60, 50), (60, 160, 230), (250, 210, 40))


def class_code(name_or_code: str | int) -> int:
    """Map a maceral's name ('liptinite') or code ('3', 3) to its code; raise ValueError otherwise
    (background too: this names the foreground class of a binary mask)."""
    text = str(name_or_code).strip().lower()
    if text in CLASS_NAMES[1:]:
        return CLASS_NAMES.index(text)
    if text.isdigit() and 0 < int(text) < NUM_CLASSES:
        return int(text)
    raise ValueError(
        f"unknown class {name_or_code!r}: use one of {', '.join(CLASS_NAMES[1:])} or a code 1..{NUM_CLASSES - 1}"
    )
