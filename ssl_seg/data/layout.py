"""Find a dataset's images and masks on disk and check they fit together.

Three layouts are recognised:

- ``ss2`` (Stranger Sections 2): ``train/labeled/<id>.JPG`` + ``train/labels/<id>_gt.npy``,
  optional ``train/unlabeled/`` and ``test/``.
- ``generic``: ``images/`` + ``masks/`` (or ``labels/``) with matching stems (``<stem>`` or
  ``<stem>_gt``); images without a mask are unlabeled; optional ``unlabeled/`` and ``test/``.
- ``images``: a plain folder of images, all unlabeled.

Binary (0/255) masks need their class: a per-folder ``binary_class`` argument, or per image
a ``binary_classes.csv`` (lines ``id,class``) in the labels/masks folder, which wins.

>>> index = discover("data/ss2", binary_class=None)   # doctest: +SKIP
>>> index.summary()                                   # doctest: +SKIP
'layout ss2 at data/ss2: 87 labeled, 8641 unlabeled, 25 test'
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssl_seg import class_code
from ssl_seg.data.io import (IMAGE_SUFFIXES, MASK_SUFFIXES, DataError, binary_class_code, csv_rows, exif_orientation,
                             image_size, read_image, read_mask)

BINARY_CLASSES_CSV = "binary_classes.csv"
MASK_FOLDER_NAMES = ("masks", "labels")
LABEL_SUFFIX = "_gt"

_LAYOUTS_HELP = (
    "expected either the SS2 layout (train/labeled/<id>.JPG + train/labels/<id>_gt.npy, "
    "optional train/unlabeled/ and test/), the generic layout (images/ + masks/ with matching "
    "stems, optional unlabeled/ and test/), or a folder of images"
)


@dataclass(frozen=True)
class Sample:
    """One training image, with its mask (None when unlabeled) and the class of a binary mask."""

    id: str
    image: Path
    mask: Path | None = None
    binary_class: int | None = None
    truth: Path | None = None  # an unlabeled image's true mask (procedural data): diagnostics only, never trained on

    def read_image(self) -> np.ndarray:
        return read_image(self.image)

    def read_mask(self, *, pseudo: bool = False) -> np.ndarray:
        """The mask as class codes; raises DataError when the sample has none."""
        if self.mask is None:
            raise DataError(f"sample {self.id} ({self.image}) has no mask; fix: use it as an unlabeled image")
        return read_mask(self.mask, None if pseudo else self.binary_class, pseudo=pseudo)


@dataclass
class DatasetIndex:
    """What :func:`discover` found under ``root``."""

    root: Path
    layout: str  # "ss2" | "generic" | "images"
    labeled: list[Sample] = field(default_factory=list)
    unlabeled: list[Path] = field(default_factory=list)
    test: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"layout {self.layout} at {self.root}: {len(self.labeled)} labeled, "
            f"{len(self.unlabeled)} unlabeled, {len(self.test)} test"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able manifest; paths relative to ``root`` (POSIX style)."""

        def rel(path: Path) -> str:
            try:
                return path.relative_to(self.root).as_posix()
            except ValueError:
                return path.as_posix()

        return {
            "root": str(self.root),
            "layout": self.layout,
            "labeled": [
                {
                    "id": sample.id,
                    "image": rel(sample.image),
                    "mask": None if sample.mask is None else rel(sample.mask),
                    "binary_class": sample.binary_class,
                }
                for sample in self.labeled
            ],
            "unlabeled": [rel(path) for path in self.unlabeled],
            "test": [rel(path) for path in self.test],
        }


# --------------------------------------------------------------------------- listing


def _visible_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files directly in ``folder`` with one of ``suffixes`` (any case), skipping hidden/temp files; links
    whose target is gone are named once on stderr (a moved or unmounted source, not a file to skip quietly)."""
    dangling = sorted(path.name for path in folder.iterdir()
                      if path.is_symlink() and not path.exists() and path.suffix.lower() in suffixes)
    if dangling and (folder, tuple(dangling)) not in _DANGLING_SAID:
        _DANGLING_SAID.add((folder, tuple(dangling)))
        names = ", ".join(dangling[:5]) + (f" and {len(dangling) - 5} more" if len(dangling) > 5 else "")
        print(f"ssl-seg: skipping {len(dangling)} broken symlink(s) in {folder} (their targets are gone): {names}",
              file=sys.stderr)
    return sorted(
        (
            path
            for path in folder.iterdir()
            if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in suffixes
        ),
        key=lambda path: path.name,
    )


_DANGLING_SAID: set = set()  # each folder's broken links are named once per process


def _check_unique_stems(paths: list[Path], what: str) -> None:
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise DataError(
                f"{what} {path} and {seen[path.stem]} share the id {path.stem!r}; fix: rename or remove one of them"
            )
        seen[path.stem] = path


def list_images(folder: str | Path) -> list[Path]:
    """Images directly in ``folder`` (by :data:`IMAGE_SUFFIXES`, any case), sorted by name."""
    folder = Path(folder)
    if folder.is_file():
        raise DataError(f"image folder {folder}: is a file; fix: pass the folder that holds it, {folder.parent}")
    if not folder.is_dir():
        raise DataError(f"image folder {folder}: not found; fix: check the path")
    images = _visible_files(folder, IMAGE_SUFFIXES)
    if not images:
        # a dataset root: name its image folders, e.g. SS2's test/ or a generic layout's images/ (not its masks/)
        inside = [str(sub) for sub in sorted(folder.iterdir())
                  if sub.is_dir() and not sub.name.startswith(".") and sub.name.lower() not in MASK_FOLDER_NAMES
                  and _visible_files(sub, IMAGE_SUFFIXES)]
        hint = f", e.g. {' or '.join(inside[:3])}" if inside else ""
        raise DataError(
            f"image folder {folder}: no images found (searched for {', '.join(IMAGE_SUFFIXES)}, any case); "
            f"fix: point to the folder that holds the images{hint}"
        )
    _check_unique_stems(images, "images")
    return images


def _optional_images(folder: Path) -> list[Path]:
    """Images of an optional folder: [] when absent or empty."""
    if not folder.is_dir():
        return []
    images = _visible_files(folder, IMAGE_SUFFIXES)
    _check_unique_stems(images, "images")
    return images


# --------------------------------------------------------------------------- masks and classes


def masks_by_id(folder: Path, image_ids: set[str] = frozenset()) -> dict[str, Path]:
    """Map image id -> mask file; ``<id>`` and ``<id>_gt`` both name image ``<id>``, and a mask whose
    whole stem is one of ``image_ids`` names that image unless ``<stem>`` less ``_gt`` is one too
    (an id may itself end in ``_gt``)."""
    masks: dict[str, Path] = {}
    for mask in _visible_files(folder, MASK_SUFFIXES):
        stem = mask.stem
        stripped = stem.removesuffix(LABEL_SUFFIX)
        # <id>_gt first (the SS2 way, also for ids 'core' and 'core_gt'), then an id that itself ends in _gt
        mask_id = stripped if stripped in image_ids or stem not in image_ids else stem
        if mask_id in masks:
            raise DataError(
                f"masks {mask} and {masks[mask_id]} both belong to image id {mask_id!r}; fix: keep only one of them"
            )
        masks[mask_id] = mask
    return masks


def read_binary_classes(csv_path: str | Path, known_ids: set[str]) -> dict[str, int]:
    """Parse a ``binary_classes.csv``: ``id,class`` lines -> {id: class code}.

    Optional ``id,class`` header, '#' comments and blank lines are skipped; an unknown class,
    an id not in ``known_ids``, a repeated id or a malformed line is a DataError naming ``file:line``.
    """
    csv_path = Path(csv_path)
    classes: dict[str, int] = {}
    for line_number, row in enumerate(csv_rows(csv_path), start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        where = f"{csv_path}:{line_number}"
        if line_number == 1 and [cell.lower() for cell in cells] == ["id", "class"]:
            continue
        if len(cells) != 2:
            raise DataError(f"{where}: expected 'id,class', found {','.join(row)!r}; fix: one image per line")
        image_id, name = cells
        try:
            code = class_code(name)
        except ValueError as error:
            raise DataError(f"{where}: {error}") from None
        if image_id not in known_ids:
            raise DataError(
                f"{where}: id {image_id!r} matches no labeled image; fix: use the image's file name without suffix"
            )
        if image_id in classes:
            raise DataError(f"{where}: id {image_id!r} is listed twice; fix: keep one line per image")
        classes[image_id] = code
    return classes


def _pair_labeled(
    images: list[Path], mask_folder: Path, binary_class: int | None, *, require_all: bool
) -> tuple[list[Sample], list[Path]]:
    """Match images to masks; return (labeled samples, images without a mask).

    ``require_all``: every image must have a mask (SS2 ``train/labeled``).
    A mask without an image is always an error: it means a typo or a missing file.
    """
    lossy = [path for path in _visible_files(mask_folder, IMAGE_SUFFIXES) if path.suffix.lower() not in MASK_SUFFIXES]
    if lossy:  # a folder of masks: a JPEG there is a mask saved lossily, not an image to skip
        raise DataError(f"mask {lossy[0]}: JPEG compression alters class codes at every edge; fix: save the "
                        f"masks as .npy or .png, or move the file out of {mask_folder}")
    image_ids = {image.stem for image in images}
    masks = masks_by_id(mask_folder, image_ids)
    for mask_id, mask in masks.items():
        if mask_id not in image_ids:
            raise DataError(
                f"mask {mask}: no image named {mask_id!r} beside it; fix: add the image or remove the mask"
            )
    labeled_ids = set(masks)
    csv_path = mask_folder / BINARY_CLASSES_CSV
    per_image = read_binary_classes(csv_path, labeled_ids) if csv_path.is_file() else {}
    labeled: list[Sample] = []
    unlabeled: list[Path] = []
    for image in images:
        mask = masks.get(image.stem)
        if mask is None:
            if require_all:
                raise DataError(
                    f"labeled image {image}: no mask {image.stem}{LABEL_SUFFIX}.npy (or .png) in {mask_folder}; "
                    "fix: add its mask or move the image to train/unlabeled/"
                )
            unlabeled.append(image)
            continue
        labeled.append(Sample(image.stem, image, mask, per_image.get(image.stem, binary_class)))
    return labeled, unlabeled


# --------------------------------------------------------------------------- discovery


def _discover_ss2(root: Path, binary_class: int | None) -> DatasetIndex:
    labeled_dir = root / "train" / "labeled"
    labels_dir = root / "train" / "labels"
    images = _optional_images(labeled_dir)
    if images and not labels_dir.is_dir():
        raise DataError(
            f"SS2 layout at {root}: {labeled_dir} has images but {labels_dir} is missing; "
            "fix: add the <id>_gt.npy masks there"
        )
    labeled: list[Sample] = []
    if labels_dir.is_dir():
        labeled, _ = _pair_labeled(images, labels_dir, binary_class, require_all=True)
    return DatasetIndex(
        root=root,
        layout="ss2",
        labeled=labeled,
        unlabeled=_optional_images(root / "train" / "unlabeled"),
        test=_optional_images(root / "test"),
    )


def _discover_generic(root: Path, binary_class: int | None) -> DatasetIndex:
    images = _optional_images(root / "images")
    mask_dir = next((root / name for name in MASK_FOLDER_NAMES if (root / name).is_dir()), None)
    labeled: list[Sample] = []
    unlabeled = images
    if mask_dir is not None:
        labeled, unlabeled = _pair_labeled(images, mask_dir, binary_class, require_all=False)
    unlabeled = unlabeled + _optional_images(root / "unlabeled")
    # Pseudo-labels are written per id, so unlabeled ids must not collide across folders.
    _check_unique_stems(unlabeled, "unlabeled images")
    return DatasetIndex(root=root, layout="generic", labeled=labeled, unlabeled=unlabeled,
                        test=_optional_images(root / "test"))


def discover(root: str | Path, binary_class: int | None = None) -> DatasetIndex:
    """Recognise the layout under ``root`` and index its labeled, unlabeled and test images.

    ``binary_class`` (1..3 or a class name) is the class of binary 0/255 masks in this folder;
    a ``binary_classes.csv`` beside the masks overrides it per image.
    """
    root = Path(root)
    code = binary_class_code(binary_class)
    if not root.is_dir():
        raise DataError(f"dataset root {root}: not found; fix: {_LAYOUTS_HELP}")
    if (root / "train").is_dir():
        index = _discover_ss2(root, code)
    elif (root / "images").is_dir():
        index = _discover_generic(root, code)
    else:
        images = _optional_images(root)
        masks = next((root / name for name in MASK_FOLDER_NAMES if (root / name).is_dir()), None)
        if not images and masks is not None:
            raise DataError(f"dataset root {root}: {masks} holds masks but {root / 'images'} is missing; fix: put "
                            f"their images in {root / 'images'} (named like the masks, without _gt)")
        if not images:
            raise DataError(f"dataset root {root}: no recognisable layout; fix: {_LAYOUTS_HELP}")
        return DatasetIndex(root=root, layout="images", unlabeled=images)
    if not (index.labeled or index.unlabeled or index.test):
        raise DataError(f"dataset root {root}: {index.layout} layout but no images in it; fix: {_LAYOUTS_HELP}")
    return index


def _labeled_root_above(folder: Path) -> Path | None:
    """The nearest folder above ``folder`` (at most two levels: SS2's train/labeled) with labeled images."""
    for candidate in list(folder.absolute().parents)[:2]:
        try:
            if discover(candidate).labeled:
                return candidate
        except (DataError, OSError):  # no dataset there, or not readable
            continue
    return None


def why_no_labeled(index: DatasetIndex) -> str:
    """Why ``index`` holds no labeled image, and the fix: one line for a training run's error."""
    root = index.root
    if index.layout == "images":
        above = _labeled_root_above(root)
        fix = f"pass the dataset folder above it, --data {above}" if above else _LAYOUTS_HELP
        return f"{root} is a folder of images without masks; fix: {fix}"
    if index.layout == "generic":
        folders = [root / name for name in MASK_FOLDER_NAMES if (root / name).is_dir()]
        if not folders:
            others = sorted(path.name for path in root.iterdir() if path.is_dir() and path.name != "images")
            near = difflib.get_close_matches("masks", others, n=1, cutoff=0.6)
            hint = f"rename {root / near[0]} to {root / 'masks'}" if near else f"put the masks in {root / 'masks'}"
            return (f"{root} has images/ but no masks/ (or labels/) folder"
                    f"{' (folders there: ' + ', '.join(others) + ')' if others else ''}; fix: {hint}")
        # only the first mask folder is read; masks of another name would have been named as unpaired
        unread = [folder for folder in folders[1:] if _visible_files(folder, MASK_SUFFIXES)]
        fix = (f"move the masks of {unread[0]} into it, or remove the empty {folders[0]}" if unread
               else f"put the masks there ({', '.join(MASK_SUFFIXES)}, named like their images)")
        return f"{folders[0]} holds no masks; fix: {fix}"
    return f"{root / 'train' / 'labeled'} holds no images; fix: add images there with their masks in train/labels/"


def validate(index: DatasetIndex) -> None:
    """Read every labeled mask (with its binary class) and check it matches its image's size.

    Images are only read by header, so this stays fast. Raises DataError at the first bad file.
    """
    for sample in index.labeled:
        if sample.mask is None:
            continue
        mask = read_mask(sample.mask, sample.binary_class)
        height, width = image_size(sample.image)
        if mask.shape == (width, height) != (height, width) and exif_orientation(sample.image) in (5, 6, 7, 8):
            raise DataError(
                f"mask {sample.mask}: size {mask.shape[0]}x{mask.shape[1]} (HxW) fits image {sample.image} as stored, "
                f"but that image carries an EXIF rotation (orientation {exif_orientation(sample.image)}), which "
                f"ssl-seg applies, so it reads as {height}x{width}; fix: rotate the mask the same way, or re-save "
                "the image upright without the EXIF orientation tag"
            )
        if mask.shape != (height, width):
            raise DataError(
                f"mask {sample.mask}: size {mask.shape[0]}x{mask.shape[1]} (HxW) but image {sample.image} "
                f"is {height}x{width}; fix: give the mask the image's size"
            )
