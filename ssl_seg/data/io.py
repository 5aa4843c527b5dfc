"""Image, mask and prediction IO: strict readers with one-line errors, atomic writers.

Everything that reads a user's file goes through here, so every bad file is refused the
same way: a :class:`DataError` whose one-line message names the file, what was found and
the fix. Writers never leave half-written files: they write a temp file beside the target
and ``os.replace`` it into place.

>>> mask = read_mask("labels/vyqade_gt.npy", binary_class=3)   # doctest: +SKIP
>>> save_png("out/vyqade_pred.png", mask)                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ssl_seg import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE
from ssl_seg.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = (".npy", ".png", ".bmp", ".tif", ".tiff")

CLASS_CODES = frozenset(range(NUM_CLASSES))
MASK_VALUES = CLASS_CODES | {IGNORE_INDEX}
IGNORE_COLOUR = (128, 128, 128)

_EXIF_ORIENTATION = 0x0112
_PIL_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)
_BINARY_FIX = "give its class with --binary-class NAME or a binary_classes.csv line"


# --------------------------------------------------------------------------- images


def _to_uint8_by_range(array: np.ndarray) -> np.ndarray:
    """Scale an integer/float array to uint8 by its data type's range (not the image's max)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        finite = array[np.isfinite(array)]
        finite_max = float(finite.max()) if finite.size else 0.0
        # A float image has no type range, so each image's is chosen: 0..1 (the usual float convention),
        # 0..255 (an 8-bit image saved as float, as ImageJ's 32-bit export does) or a 16-bit range; a
        # little above a range's top (float rounding) still counts as in it.
        top = next((top for top in (1.0, 255.0) if finite_max <= top * 1.001), 65535.0)
        scaled = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=top, neginf=0.0) / top * 255.0
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    info = np.iinfo(array.dtype)
    # 32-bit PIL "I" images almost always hold 16-bit data (old Pillow opened 16-bit PNGs as "I").
    top = 65535 if info.bits > 16 else info.max
    scaled = np.clip(array.astype(np.float64), 0, top) / top * 255.0
    return np.rint(scaled).astype(np.uint8)


_warned_12_bit = False


def _rgb_from_array(array: np.ndarray, path: Path) -> np.ndarray:
    """HxW / HxWx1..4 array of any depth -> uint8 HxWx3."""
    global _warned_12_bit
    if not _warned_12_bit and array.dtype in (np.uint16, np.int32) and array.size and 0 < int(array.max()) <= 4095:
        # a 12-bit camera's values in a 16-bit file: one fixed scale keeps reflectance comparable between
        # images, so it is not stretched per image, but the user should know it comes out dark and coarse
        _warned_12_bit = True  # once per process: a folder of them would repeat it for every image
        print(f"ssl-seg: image {path}: 16-bit with values only up to {int(array.max())} (a 12-bit camera?) is read "
              "on the 16-bit scale, dark and in 16 grey levels (said once for all such images); fix: save "
              "such images multiplied by 16, or as 8-bit, all on one scale", file=sys.stderr)
    array = _to_uint8_by_range(array)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (1, 2):
        return np.repeat(array[:, :, :1], 3, axis=2)
    if array.ndim == 3 and array.shape[2] >= 3:
        # A writable copy: Pillow's buffers are read-only, which torch.from_numpy warns about.
        return np.array(array[:, :, :3], order="C")
    raise DataError(
        f"image {path}: unsupported pixel array of shape {array.shape}; fix: save it as an RGB or grey JPG/PNG/TIFF"
    )


def _read_tiff_fallback(path: Path) -> np.ndarray | None:
    """Read TIFFs Pillow cannot, or reads wrong (planar, or more than 8 bits per colour channel), at full
    depth through tifffile, the TIFF orientation tag applied as Pillow would; None if tifffile fails too."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            array = tiff.asarray()
            orientation = tiff.pages[0].tags.get(274)
            orientation = int(orientation.value) if orientation is not None else 1
    except Exception:  # noqa: BLE001 - any tifffile failure means "unreadable" to the caller
        return None
    # Planar (C,H,W) -> (H,W,C).
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
    return _oriented(array, orientation)


def _oriented(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` (H,W[,C]) shown as its orientation tag says, like ``ImageOps.exif_transpose``."""
    if orientation in (2, 4, 5, 7):  # the mirrored ones: mirror first, then rotate as 1, 3, 8, 6 do
        array = array[:, ::-1]
    quarter_turns = {3: 2, 4: 2, 5: 1, 6: -1, 7: -1, 8: 1}.get(orientation, 0)  # counter-clockwise
    return np.ascontiguousarray(np.rot90(array, quarter_turns))


def _pillow_misreads_tiff(image: Image.Image) -> bool:
    """Pillow decodes planar (one plane per channel) TIFFs of more than 8 bits into wrong pixels, and
    16-bit RGB ones as 8-bit (the low byte lost); tifffile reads both at full depth."""
    if image.format != "TIFF":
        return False
    bits = image.tag_v2.get(258, 8)
    bits = max(bits) if isinstance(bits, tuple) else bits
    kept_depth = image.mode.startswith("I") or image.mode == "F"  # grey 16/32-bit and float: Pillow reads right
    return bits > 8 and (image.tag_v2.get(284, 1) == 2 or not kept_depth)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 HxWx3 RGB, EXIF orientation applied.

    Grey, palette, grey+alpha and RGBA are converted to RGB (alpha dropped); 16-bit images are
    scaled to 8 bit by their data type's range (65535), never by the image's own maximum, so
    brightness stays comparable between images. Float images have no type range: each is read as
    0..1, 0..255 or 0..65535, the smallest range that holds its values.

    >>> read_image("train/labeled/vyqade.JPG").shape   # doctest: +SKIP
    (1024, 1360, 3)
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path}: file not found; fix: check the path")
    try:
        with Image.open(path) as opened:
            if _pillow_misreads_tiff(opened):
                array = _read_tiff_fallback(path)
                if array is not None:
                    return _rgb_from_array(np.asarray(array), path)
            image = ImageOps.exif_transpose(opened)
            image.load()
            mode = image.mode
            if mode in ("RGB", "L", "1", "F") or mode.startswith("I"):
                # Kept at their own depth: _rgb_from_array scales 16-bit/float by type range.
                array = np.asarray(image)
            elif mode in ("P", "PA"):
                # Via RGBA: Pillow warns when palette transparency goes straight to RGB.
                array = np.asarray(image.convert("RGBA"))[:, :, :3]
            else:  # RGBA, LA, CMYK, YCbCr, ...
                array = np.asarray(image.convert("RGB"))
    except _PIL_ERRORS as error:
        array = _read_tiff_fallback(path) if path.suffix.lower() in (".tif", ".tiff") else None
        if array is None:
            raise DataError(
                f"image {path}: cannot be decoded ({type(error).__name__}: {error}); "
                "fix: re-save it as JPG/PNG/TIFF or remove it from the folder"
            ) from None
    return _rgb_from_array(np.asarray(array), path)


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image file (1, upright, when it has none or cannot be read)."""
    try:
        with Image.open(path) as image:
            return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except (*_PIL_ERRORS, TypeError):
        return 1


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image as :func:`read_image` would return it, from the header only.

    EXIF orientations 5-8 (transposed/rotated by 90 degrees) swap height and width.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path}: file not found; fix: check the path")
    try:
        with Image.open(path) as image:
            if image.format == "TIFF":  # Pillow may orient a TIFF on opening: measure the oriented image
                if _pillow_misreads_tiff(image):
                    return read_image(path).shape[:2]
                width, height = ImageOps.exif_transpose(image).size
                return height, width
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except _PIL_ERRORS as error:
        array = _read_tiff_fallback(path) if path.suffix.lower() in (".tif", ".tiff") else None
        if array is None:
            raise DataError(
                f"image {path}: cannot be read ({type(error).__name__}: {error}); "
                "fix: re-save it as JPG/PNG/TIFF or remove it from the folder"
            ) from None
        return int(array.shape[0]), int(array.shape[1])
    if orientation in (5, 6, 7, 8):  # transposed or rotated by 90 degrees
        return width, height
    return height, width


# --------------------------------------------------------------------------- masks


def _load_label_array(path: Path, kind: str) -> np.ndarray:
    """Raw array of a mask/prediction file (.npy or a lossless image), shape and dtype untouched."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{kind} {path}: file not found; fix: check the path")
    if suffix not in MASK_SUFFIXES:
        raise DataError(
            f"{kind} {path}: unsupported format {path.suffix!r}; "
            f"fix: save it as one of {', '.join(MASK_SUFFIXES)} (JPEG is lossy and corrupts class codes)"
        )
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise DataError(
                f"{kind} {path}: not a readable numeric .npy array ({error}); "
                "fix: save it with np.save(path, uint8_array)"
            ) from None
    try:
        with Image.open(path) as image:
            image.load()
            # Palette PNGs keep their indices (the class codes); only the colours live in the palette.
            return np.array(image)
    except _PIL_ERRORS as error:
        array = _read_tiff_fallback(path) if suffix in (".tif", ".tiff") else None
        if array is None:
            fix = (  # pseudo-label runs redo an image whose mask is missing
                "delete it and rerun the same ssl-seg pseudo-label command to redo it" if kind == "pseudo-label"
                else "re-save it as PNG or NPY"
            )
            raise DataError(f"{kind} {path}: cannot be decoded ({type(error).__name__}: {error}); fix: {fix}") from None
        return array


def _squeeze_to_2d(array: np.ndarray, path: Path, kind: str) -> np.ndarray:
    """(H,W), (H,W,1), grey (H,W,2) or equal-channel (H,W,3|4) -> (H,W); refuse the rest."""
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] in (1, 2):  # grey, or grey + alpha
        return array[:, :, 0]
    if array.ndim == 3 and array.shape[2] in (3, 4):
        colour = array[:, :, :3]  # alpha carries no class
        if np.array_equal(colour[:, :, 0], colour[:, :, 1]) and np.array_equal(colour[:, :, 0], colour[:, :, 2]):
            return colour[:, :, 0]
        raise DataError(
            f"{kind} {path}: colour mask of shape {array.shape} with differing channels; "
            "fix: save a single-channel mask whose pixel values are the class codes 0..3 (255 = ignore)"
        )
    raise DataError(f"{kind} {path}: expected a 2-D HxW array, found shape {array.shape}; "
                    "fix: save an HxW class-code mask")


def _value_counts(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their pixel counts; bincount is ~20x faster than np.unique on uint8."""
    if array.dtype == np.uint8:
        counts = np.bincount(array.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(array, return_counts=True)


def _describe_values(values: np.ndarray, counts: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(f"{_format_number(v)} ({int(c)} px)" for v, c in zip(values[:limit], counts[:limit]))
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return shown + more


def _format_number(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


def _integral(array: np.ndarray, path: Path, kind: str) -> np.ndarray:
    """Float masks are fine when every value is a whole number; return an integer array."""
    if not np.issubdtype(array.dtype, np.floating):
        if not np.issubdtype(array.dtype, np.integer):
            raise DataError(
                f"{kind} {path}: unsupported dtype {array.dtype}; fix: save an integer (uint8) HxW class-code mask"
            )
        return array
    if not np.all(np.isfinite(array)):
        raise DataError(f"{kind} {path}: contains NaN or infinite values; fix: save an integer (uint8) class-code mask")
    if not np.array_equal(array, np.round(array)):
        fractional, counts = np.unique(array[array != np.round(array)], return_counts=True)
        raise DataError(
            f"{kind} {path}: float mask with fractional values {_describe_values(fractional, counts, limit=4)}; "
            "fix: save integer class codes 0..3 (255 = ignore)"
        )
    return array.astype(np.int64)


def binary_class_code(binary_class: int | str | None) -> int | None:
    """The class code of a binary mask's foreground (name or code), None when not given."""
    if binary_class is None:
        return None
    try:
        from ssl_seg import class_code

        return class_code(binary_class)
    except ValueError as error:
        raise DataError(f"binary class {binary_class!r}: {error}") from None


def read_mask(path: str | Path, binary_class: int | None = None, *, pseudo: bool = False) -> np.ndarray:
    """Read a label mask as uint8 HxW of class codes 0..3, 255 = ignore.

    Accepted: class-code masks (values within {0,1,2,3,255}) as they are; binary masks
    (0/255, possibly anti-aliased, or bool) only when ``binary_class`` names their maceral:
    pixels >= 128 become ``binary_class``, the rest 0. ``pseudo=True`` reads a pseudo-label
    map: any values within {0,1,2,3,255}, no binary interpretation. Everything else is
    refused with a :class:`DataError` naming the file, the values found and the fix.

    >>> read_mask("labels/vyqade_gt.npy", binary_class=3).max()   # doctest: +SKIP
    3
    """
    path = Path(path)
    kind = "pseudo-label" if pseudo else "mask"
    code = binary_class_code(binary_class)
    array = _squeeze_to_2d(_load_label_array(path, kind), path, kind)

    if array.dtype == np.bool_:
        if code is None or pseudo:
            raise DataError(f"{kind} {path}: boolean (binary) mask; fix: {_BINARY_FIX}")
        return np.where(array, np.uint8(code), np.uint8(0))

    array = _integral(array, path, kind)
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low >= 0 and high <= 255:
        array = array.astype(np.uint8, copy=False)
    values, counts = _value_counts(array)
    present = {int(v) for v in values}
    is_class_codes = present <= MASK_VALUES
    has_classes = bool(present & {1, 2, 3})

    if pseudo:
        if is_class_codes:
            return np.ascontiguousarray(array, dtype=np.uint8)
        raise DataError(
            f"{kind} {path}: values {_describe_values(values, counts)} outside the class codes 0..3 "
            f"and {IGNORE_INDEX}; "
            "fix: regenerate it with ssl-seg pseudo-label"
        )

    # A 0/255 mask with no class codes is binary, never "all ignore": decide it first.
    looks_binary = not has_classes and IGNORE_INDEX in present
    if code is not None:
        if is_class_codes and not looks_binary:
            return np.ascontiguousarray(array, dtype=np.uint8)
        if low < 0 or high > 255:
            raise DataError(
                f"{kind} {path}: binary mask with values {_describe_values(values, counts)} outside 0..255; "
                "fix: save it as uint8 0/255"
            )
        return np.where(array >= 128, np.uint8(code), np.uint8(0))

    if is_class_codes and not looks_binary:
        return np.ascontiguousarray(array, dtype=np.uint8)
    if present <= {0, IGNORE_INDEX}:
        raise DataError(f"{kind} {path}: looks like a binary 0/255 mask; {_BINARY_FIX}")
    # 255 beside values that are no code: a binary mask, whose anti-aliased edges may pass through 1..3
    hint = (
        f"if it is a binary (0/255, anti-aliased) mask, {_BINARY_FIX}"
        if not has_classes or IGNORE_INDEX in present
        else "save class codes " + ", ".join(f"{code} {name}" for code, name in enumerate(CLASS_NAMES))
        + f", {IGNORE_INDEX} ignore"
    )
    raise DataError(
        f"{kind} {path}: values {_describe_values(values, counts)} are not class codes 0..3 "
        f"(+{IGNORE_INDEX} ignore); fix: {hint}"
    )


def read_prediction(path: str | Path) -> np.ndarray:
    """Read a predicted mask strictly: 2-D, integer dtype, values within {0,1,2,3}; uint8 HxW."""
    path = Path(path)
    kind = "prediction"
    array = _load_label_array(path, kind)
    if array.ndim != 2:
        raise DataError(
            f"{kind} {path}: expected a 2-D HxW array, found shape {array.shape}; fix: save the HxW class-code map"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"{kind} {path}: dtype {array.dtype} is not an integer type; "
            "fix: save it as uint8 class codes (e.g. pred.astype(np.uint8))"
        )
    if array.size == 0:
        raise DataError(f"{kind} {path}: empty array of shape {array.shape}; fix: save the image's HxW class-code map")
    if int(array.min()) < 0 or int(array.max()) >= NUM_CLASSES:
        values, counts = _value_counts(array)
        raise DataError(
            f"{kind} {path}: values {_describe_values(values, counts)} outside the class codes 0..{NUM_CLASSES - 1}; "
            "fix: write argmax class codes, with no ignore value"
        )
    return np.ascontiguousarray(array, dtype=np.uint8)


# --------------------------------------------------------------------------- atomic writers


def output_folder(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a folder to write into; DataError when a file is in its place."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{flag} {path} is a file; it must be a folder (a new one, or the {flag} of an earlier run)")
    return path


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (same suffix); on success ``os.replace`` it onto ``path``.

    The temp name starts with '.' so folder listings skip it, and keeps the suffix so
    Pillow picks the right format. On error the temp file is removed and ``path`` untouched.

    >>> with atomic_write("out/a.json") as tmp:      # doctest: +SKIP
    ...     tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield temp
        # flushed to disk before the rename, and the rename itself after: a crash leaves old or new, never empty
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
        fsync_folder(path.parent)
    except OSError as exc:  # name what the user knows: the file (full disk) or its folder (no write access)
        if exc.errno is None or exc.filename not in (None, str(temp), temp):
            raise
        named = path.parent if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else path
        raise type(exc)(exc.errno, exc.strerror, str(named)) from None
    finally:
        # Only left behind on error (or when the body wrote nothing).
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temp files that a killed process left in ``folder`` (recursively); returns how many.

    Only call it when no other process writes there (a resumed job's start).
    """
    stale = [p for p in Path(folder).rglob(".*.tmp-*") if p.is_file()] if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Atomically ``np.save`` an array to exactly ``path`` (no '.npy' is appended)."""
    with atomic_write(path) as temp, open(temp, "wb") as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)


def save_png(path: str | Path, array: np.ndarray, compress_level: int = 6) -> None:
    """Atomically save a uint8 HxW (grey/class codes) or HxWx3 (RGB) array as PNG (zlib ``compress_level``
    0-9: Pillow's default 6; 1 is several times faster for a few % more bytes)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"save_png {path}: expected uint8 HxW or HxWx3, got {array.dtype} {array.shape}")
    with atomic_write(path) as temp:
        Image.fromarray(array).save(temp, format="PNG", compress_level=compress_level)


def save_jpg(path: str | Path, rgb: np.ndarray, quality: int = 90) -> None:
    """Atomically save a uint8 HxWx3 RGB array as JPEG."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"save_jpg {path}: expected uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
    with atomic_write(path) as temp:
        Image.fromarray(rgb).save(temp, format="JPEG", quality=quality)


def csv_rows(path: str | Path) -> list[list[str]]:
    """The rows of a small UTF-8 CSV file (a byte-order mark is dropped); DataError naming ``file:line``
    for text the csv module cannot parse."""
    try:
        lines = Path(path).read_bytes().decode("utf-8-sig").splitlines(keepends=True)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); "
                        "fix: save it as a UTF-8 CSV") from None
    reader = csv.reader(lines)
    try:
        return list(reader)
    except csv.Error as error:  # an unclosed quote, a field past the csv module's size limit
        raise DataError(f"{path}:{reader.line_num}: not a readable CSV line ({error}); "
                        "fix: save it as a plain comma-separated file") from None


def changed_settings(record: str | Path, now: dict) -> list[str]:
    """``"key before -> now"`` for each key of ``now`` that the JSON file ``record`` holds with another
    value; keys it does not hold (folders of older versions) are not compared."""
    before = json.loads(Path(record).read_text())
    return [f"{key} {before[key]} -> {value}" for key, value in now.items() if key in before and before[key] != value]


def save_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (UTF-8, trailing newline)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    with atomic_write(path) as temp:
        temp.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- visualisation


def _palette_lut() -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(PALETTE)] = np.asarray(PALETTE, dtype=np.uint8)
    lut[IGNORE_INDEX] = IGNORE_COLOUR
    return lut


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class-code mask HxW -> uint8 HxWx3 with ``ssl_seg.PALETTE`` colours (255 -> mid grey)."""
    mask = np.asarray(mask)
    return _palette_lut()[np.clip(mask, 0, 255).astype(np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend class colours onto an RGB image; background and ignore pixels keep the image."""
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"overlay: image {image.shape[:2]} and mask {mask.shape} differ in size")
    colours = colorize(mask).astype(np.float32)
    blended = image.astype(np.float32) * (1.0 - alpha) + colours * alpha
    foreground = ((mask > 0) & (mask < NUM_CLASSES))[:, :, None]
    return np.where(foreground, np.rint(blended), image).astype(np.uint8)
