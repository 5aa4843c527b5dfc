"""``ssl-seg predict``: a checkpoint over a folder of images -> ``<id>_pred.npy`` (and overlays)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ssl_seg.data.images import decoded_images, same_image
from ssl_seg.data.io import changed_settings, output_folder, overlay, save_jpg, save_json, save_npy
from ssl_seg.data.layout import list_images
from ssl_seg.errors import DataError, one_line
from ssl_seg.inference import predict_proba, to_tensor
from ssl_seg.tb import legend_strip
from ssl_seg.train.checkpoint import checkpoint_file, file_sha256, load_model
from ssl_seg.runtime import resolve_device


def predict_folder(checkpoint: str | Path, images: str | Path, out: str | Path, tile_size: int = 512,
                   tta: int = 1, overlays: bool = False, device: str = "auto", workers: int = 2,
                   skip_existing: bool = False, progress: bool = True) -> list[Path]:
    """Write ``<id>_pred.npy`` (uint8, the image's full shape, values 0..3) for every image."""
    if tile_size < 32:
        raise ValueError(f"--tile-size must be at least 32 pixels, got {tile_size}")
    out = output_folder(out)
    device_ = resolve_device(device)
    model, _ = load_model(checkpoint, device_)
    paths = list_images(images)
    settings = {"checkpoint_sha256": file_sha256(checkpoint_file(checkpoint)), "tta": tta, "tile_size": tile_size}
    record = out / "predict.json"  # absent in folders of ssl_seg 0.1.4 and earlier
    changed = changed_settings(record, settings) if record.is_file() else []
    if changed and skip_existing:
        raise ValueError(f"{out} holds masks predicted with other settings ({'; '.join(changed)}); --skip-existing "
                         "would mix them: drop it to predict every image again, or pass another --out")
    sources = json.loads(record.read_text()).get("sources", {}) if record.is_file() else {}
    for path in paths:  # two folders that share file names (IMG_0001.jpg) would overwrite each other's masks
        before = sources.get(path.stem)
        if before and (out / f"{path.stem}_pred.npy").is_file() and not same_image(Path(before), path):
            raise DataError(f"{out} holds {path.stem}_pred.npy, the mask of {before}, and {path} has the same id; "
                            "fix: predict these images into another --out")
    if changed:
        ids = {path.stem for path in paths}
        others = sorted(mask.name for mask in out.glob("*_pred.npy") if mask.name.removesuffix("_pred.npy") not in ids)
        if others:  # predict.json can only speak for one setting
            raise ValueError(f"{out} holds {len(others)} masks of other images predicted with other settings "
                             f"({'; '.join(changed)}), such as {others[0]}; fix: pass another --out, or remove "
                             "those masks first")
        remove_masks(out, paths)
        sources = {}
    sources.update({path.stem: os.path.abspath(path) for path in paths})  # the image each mask comes from
    save_json(record, {**settings, "sources": sources})  # before any mask: a later --skip-existing compares with it
    todo = [p for p in paths if not (skip_existing and (out / f"{p.stem}_pred.npy").exists())]
    written = []
    try:
        for path, image in tqdm(decoded_images(todo, workers), total=len(todo), desc="predict", disable=not progress):
            probs = predict_proba(model, to_tensor(image, device_), tile_size=tile_size, tta=tta)
            pred = probs[0].argmax(0).to(torch.uint8).cpu().numpy()
            target = out / f"{path.stem}_pred.npy"
            save_npy(target, pred)
            if overlays:
                legend = legend_strip(image.shape[1], ignored=False)
                save_jpg(out / "overlays" / f"{path.stem}.jpg", np.concatenate([overlay(image, pred), legend]))
            written.append(target)
    except DataError as exc:  # an unreadable image: the masks written so far are kept
        hint = "; then add --skip-existing to the same command to keep the masks already written" if written else ""
        raise DataError(f"{one_line(exc)}{hint}") from None  # the worker's message, not its traceback
    return written


def remove_masks(out: Path, paths: list[Path]) -> None:
    """A full run with other settings replaces the masks of its images; they go first, so that if it is
    interrupted, a ``--skip-existing`` rerun does not keep the older model's masks of the images not yet done."""
    stale = [path.stem for path in paths if (out / f"{path.stem}_pred.npy").is_file()]
    for stem in stale:
        (out / f"{stem}_pred.npy").unlink()
        (out / "overlays" / f"{stem}.jpg").unlink(missing_ok=True)
    if stale:
        print(f"ssl-seg predict: replacing {len(stale)} masks of other settings in {out}", file=sys.stderr)
