"""The pseudo-label folder format, in one place: what ``pseudo-label`` writes and ``pretrain`` reads.

    OUT/masks/<id>.png        0..3, 255 where the teacher was not confident
    OUT/confidence/<id>.png   the teacher's confidence x 255
    OUT/entries/<id>.json     one image's record, written last: the image counts as done once it exists
    OUT/settings.json         the settings every run into OUT must share
    OUT/manifest.json         every entry merged, with totals; paths relative to OUT (see docs/pseudo-label-folder.md)
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from ssl_seg import CLASS_NAMES
from ssl_seg.data.images import same_image
from ssl_seg.data.io import IMAGE_SUFFIXES, DataError, changed_settings, save_json, save_png
from ssl_seg.data.layout import Sample
from ssl_seg.errors import TrainError


def manifest_image_path(image: Path, out: Path) -> str:
    """An image's path as ``manifest.json`` in ``out`` records it: relative, so both can move together."""
    return os.path.relpath(image.resolve(), out.resolve())


def check_same_images(done: list[Path], out: Path) -> None:
    """Refuse an image whose id names another image's finished pseudo-label in ``out`` (two folders that share
    file names, such as IMG_0001.jpg): it would be skipped as done. A recorded image that is gone is not
    compared (the folder may have moved without its images)."""
    for path in done:
        recorded = out / json.loads((out / "entries" / f"{path.stem}.json").read_text())["image"]
        if not same_image(recorded, path):
            raise DataError(f"{out} holds the pseudo-label of {os.path.normpath(recorded)} under id {path.stem!r}, "
                            f"and {path} has the same id; fix: label these images into another --out")


def write_outputs(out: Path, stem: str, pseudo: np.ndarray, confidence: np.ndarray, entry: dict) -> None:
    # level 1: faster to encode than the default 6 for somewhat larger files; the decoded maps are the same
    save_png(out / "masks" / f"{stem}.png", pseudo, compress_level=1)
    save_png(out / "confidence" / f"{stem}.png", np.round(confidence * 255).astype(np.uint8), compress_level=1)
    save_json(out / "entries" / f"{stem}.json", entry)  # last: marks the image done


@contextlib.contextmanager
def merge_lock(out: Path):
    """Shards that finish together merge one after another, so the last to merge sees every entry."""
    try:
        import fcntl
    except ImportError:  # not POSIX: shards should then be merged by one rerun after all have finished
        yield
        return
    folder = os.open(out, os.O_RDONLY)  # the lock sits on the folder itself: no lock file is left behind
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # closing releases the lock


# What a folder's settings.json and every entry record, besides the refiner.
SETTING_KEYS = ("threshold", "class_balance", "tta", "tile_size", "teacher_sha256", "dinov2", "dinov2_labeled")


def comparable_settings(settings: dict) -> dict:
    """The settings two runs into one folder must share: the teacher's bytes and the refiner's kind, not
    their paths (a project folder may move to another machine). Keys that folders of older versions do
    not record are left out, and so not compared."""
    return {"refiner": settings["refiner"].split(":")[0], **{k: settings[k] for k in SETTING_KEYS if k in settings}}


def check_same_settings(out: Path, settings: dict) -> None:
    """A folder holds pseudo-labels of one setting: a rerun with others would mix two kinds of masks.

    The settings are compared once the folder holds a finished image; before, a rerun may change them.
    """
    now = comparable_settings(settings)
    path = out / "settings.json"
    if path.is_file() and any((out / "entries").glob("[!.]*.json")):
        changed = changed_settings(path, now)  # folders of ssl_seg 0.1.3 and earlier record no teacher digest
        if changed:
            raise ValueError(f"{out} holds pseudo-labels made with other settings ({'; '.join(changed)}); "
                             "rerun with the same ones to resume, or pass another --out")
    else:
        save_json(path, now)


def check_entries_agree(out: Path, entries: dict) -> None:
    """Shards started at the same moment with different options all pass ``check_same_settings`` (no
    image is finished yet when they compare): the merge is where their mixed masks are caught."""
    values: dict[str, set] = {}
    for entry in entries.values():
        for key, value in comparable_settings(entry).items():
            values.setdefault(key, set()).add(json.dumps(value))
    mixed = [f"{key} {' and '.join(sorted(found))}" for key, found in values.items() if len(found) > 1]
    if mixed:
        raise ValueError(f"{out} mixes pseudo-labels of different settings ({'; '.join(mixed)}), as shards started "
                         "at once with different options make; delete the folder and rerun every shard with the "
                         "same options")


def merge_manifest(out: Path, settings: dict) -> dict:
    """manifest.json from every finished entry (all shards), with totals. ``settings["images_expected"]``
    counts the images of all shards: a manifest with fewer holds unfinished shards."""
    with merge_lock(out):
        entries = {path.stem: json.loads(path.read_text())
                   for path in sorted((out / "entries").glob("*.json"))
                   if not path.name.startswith(".")}  # skip temporaries of entries being written
        check_entries_agree(out, entries)
        pixels = sum(e["pixels"] for e in entries.values()) or 1
        summary = {
            "images": len(entries),
            "confident_fraction": sum(e["confident_fraction"] * e["pixels"] for e in entries.values()) / pixels,
            "class_fractions": {name: sum(e["class_fractions"][name] * e["pixels"] for e in entries.values()) / pixels
                                for name in CLASS_NAMES},
            "changed_pixels": sum(e.get("changed_pixels", 0) for e in entries.values()),
        }
        manifest = {**settings, "summary": summary, "images": entries}
        save_json(out / "manifest.json", manifest)
    return manifest


def pseudo_samples(pseudo_dir: Path) -> list[Sample]:
    """Unlabeled images paired with their pseudo masks, from the folder ``pseudo-label`` wrote."""
    manifest = pseudo_dir / "manifest.json"
    if not manifest.is_file():  # say what the folder is instead, where it can be told
        if (pseudo_dir / "settings.json").is_file():
            done = len(list((pseudo_dir / "entries").glob("[!.]*.json")))
            raise TrainError(f"pseudo-labelling into {pseudo_dir} has not finished ({done} image(s) done, no "
                             "manifest.json yet); rerun the same `ssl-seg pseudo-label` command (each shard's, if "
                             "sharded) to finish it (finished images are kept)")
        if pseudo_dir.is_dir() and (pseudo_dir.parent / "manifest.json").is_file():
            raise TrainError(f"{pseudo_dir} lies inside the pseudo-label folder {pseudo_dir.parent} (its masks/ or "
                             f"confidence/); pass --pseudo-labels {pseudo_dir.parent}")
        if pseudo_dir.is_dir() and any(path.suffix.lower() in IMAGE_SUFFIXES for path in pseudo_dir.iterdir()):
            raise TrainError(f"{pseudo_dir} is a folder of images, not of pseudo-labels; pass --pseudo-labels the "
                             f"--out of `ssl-seg pseudo-label --images {pseudo_dir} --out PL`")
        raise TrainError(f"{manifest} not found; run `ssl-seg pseudo-label ... --out {pseudo_dir}` first, or pass "
                         "--pseudo-labels DIR where the folder has moved")
    # image paths are relative to the manifest's folder (absolute in folders written by ssl_seg 0.1.0; both work)
    try:
        content = json.loads(manifest.read_text())
        entries = content["images"]
        samples = [Sample(id=k, image=pseudo_dir / v["image"], mask=pseudo_dir / v["mask"])
                   for k, v in sorted(entries.items())]
        expected = int(content.get("images_expected", len(samples)))  # absent before ssl_seg 0.1.4
    except (ValueError, KeyError, TypeError, AttributeError):  # truncated JSON, or not a pseudo-label manifest
        raise TrainError(f"{manifest} is not a readable pseudo-label manifest; rerun `ssl-seg pseudo-label ... "
                         f"--out {pseudo_dir}` (finished images are kept)") from None
    if not samples:
        raise TrainError(f"{manifest} lists no pseudo-labeled images; rerun pseudo-label")
    if len(samples) < expected:
        raise TrainError(f"{manifest} lists {len(samples)} of {expected} images: shards of pseudo-label are "
                         f"unfinished; rerun each `ssl-seg pseudo-label ... --shard i/n --out {pseudo_dir}` "
                         "to finish it")
    summary = content.get("summary")
    if isinstance(summary, dict) and summary.get("confident_fraction") == 0:
        raise TrainError(f"{manifest}: no pixel kept a label (confidence threshold {content.get('threshold')}), so "
                         "every pseudo mask is ignored; rerun `ssl-seg pseudo-label` into another --out with a lower "
                         "--threshold, or fine-tune the teacher longer")
    missing = [s.image for s in samples if not s.image.is_file()]
    if missing:
        raise TrainError(f"{manifest}: {len(missing)} image(s) not found, first {missing[0]}; paths are relative to "
                         f"the manifest's folder, so move the images and the pseudo-label folder together, "
                         f"or rerun pseudo-label")
    missing = [s.mask for s in samples if not s.mask.is_file()]
    if missing:
        raise TrainError(f"{manifest}: {len(missing)} pseudo mask(s) not found, first {missing[0]}; rerun "
                         f"`ssl-seg pseudo-label ... --out {pseudo_dir}` to write them again")
    return samples


def manifest_settings(folder: Path) -> dict:
    """The settings of a finished folder that a training run records (teacher digest, refiner, threshold...):
    a resumed run on a folder made with other ones is refused."""
    settings = json.loads((folder / "manifest.json").read_text())
    compared = {k: settings.get(k) for k in ("teacher_sha256", "refiner", "threshold", "class_balance", "tta")}
    # keys recorded since 0.1.7, only where recorded: runs on older folders keep their digest
    compared.update({k: settings[k] for k in ("tile_size", "dinov2_labeled") if k in settings})
    return compared


def write_truth_folder(out: Path, masks: dict[Path, np.ndarray], teacher: str) -> Path:
    """A finished folder holding given masks (the procedural generator's truth, for the demo's oracle arm)."""
    entries = {}
    for image, mask in masks.items():
        save_png(out / "masks" / f"{image.stem}.png", mask.astype(np.uint8))
        entries[image.stem] = {"image": manifest_image_path(image, out), "mask": f"masks/{image.stem}.png"}
    save_json(out / "manifest.json", {"teacher": teacher, "images": entries})
    return out
