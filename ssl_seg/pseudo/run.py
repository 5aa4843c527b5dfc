"""``ssl-seg pseudo-label``: a teacher labels unlabeled images, resumably.

Per image: tiled (TTA) teacher probabilities -> optional DINOv2 feature agreement -> optional
SAM or superpixel refinement -> ``masks/<id>.png`` (0..3, 255 where not confident),
``confidence/<id>.png`` (confidence x 255) and ``entries/<id>.json``. The entry is written last,
so an image counts as done only once all three exist; ``manifest.json`` merges the entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ssl_seg import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from ssl_seg.data.images import decoded_images
from ssl_seg.data.io import IMAGE_SUFFIXES, DataError, overlay, read_image, remove_stale_temporaries
from ssl_seg.data.layout import discover, validate
from ssl_seg.data.lock import folder_lock
from ssl_seg.data.pseudo_labels import (SETTING_KEYS, check_same_images, check_same_settings, manifest_image_path,
                                        merge_manifest, write_outputs)
from ssl_seg.errors import ModelLoadError
from ssl_seg.inference import predict_proba, to_tensor
from ssl_seg.pseudo.refine import SUPERPIXEL_METHODS, class_balanced_confidence, superpixel_refine, threshold_labels
from ssl_seg.tb import summary_writer
from ssl_seg.train.checkpoint import checkpoint_file, file_sha256, load_model
from ssl_seg.runtime import resolve_device, setup_distributed


# Below this share of confident pixels a finished run warns (typical shares: experiments/RESULTS.md).
FEW_CONFIDENT = 0.05


def say(message: str) -> None:
    print(f"ssl-seg pseudo-label: {message}", file=sys.stderr)


def listed_images(list_file: Path) -> list[Path]:
    """The images a text file names, one path a line (relative to the file's folder; ``#`` starts a comment)."""
    found = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        path = Path(line) if Path(line).is_absolute() else list_file.parent / line
        if not path.is_file():
            raise DataError(f"{list_file}, line {number}: image {line} not found; fix: list image files, one a line, "
                            f"as paths relative to {list_file.parent} or absolute")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{list_file}, line {number}: {line} is not an image ({', '.join(IMAGE_SUFFIXES)})")
        found.append(path)
    if not found:
        raise DataError(f"{list_file} lists no images; fix: one image path a line")
    return found


def unlabeled_images(images: str | Path | Sequence[str | Path]) -> list[Path]:
    """The unlabeled images of each dataset root, plain folder or list file (a .txt of image paths) in
    ``images``; their ids (file stems) must be unique across all, as pseudo-labels are stored by id."""
    sources = [images] if isinstance(images, (str, Path)) else list(images)
    found: dict[str, Path] = {}
    for source in map(Path, sources):
        if source.is_file() and source.suffix.lower() == ".txt":
            paths = listed_images(source)
        else:
            index = discover(source)
            paths = index.unlabeled if index.layout != "images" else index.unlabeled + index.test
            if not paths:
                where = {"ss2": "its train/unlabeled/",
                         "generic": "its unlabeled/ (or images without masks)"}.get(index.layout)
                raise DataError(f"{source}: no unlabeled images found ({index.summary()}); point --images at a folder "
                                f"of images{', or add them to ' + where if where else ''}")
        for path in paths:
            other = found.setdefault(path.stem, path)
            if other != path and other.resolve() != path.resolve():
                raise DataError(f"{other} and {path} share the id {path.stem!r}, and pseudo-labels are stored by id; "
                                "fix: rename one, or label the two folders into separate --out folders")
    return sorted(found.values(), key=lambda p: p.name)


def labeled_pairs(labeled: str, binary_class: str | None = None):
    """(image, mask) of every labeled sample of a dataset, each mask checked against its image."""
    from ssl_seg import class_code

    index = discover(labeled, binary_class=class_code(binary_class) if binary_class else None)
    validate(index)
    for sample in index.labeled:
        yield read_image(sample.image), sample.read_mask()


def labeled_set_digest(labeled: str, binary_class: str | None = None) -> str:
    """Names the DINOv2 prototypes' labeled set by its ids and mask bytes, not its path (folders move)."""
    from ssl_seg import class_code

    binary = class_code(binary_class) if binary_class else None
    index = discover(labeled, binary_class=binary)
    digest = hashlib.sha256(str(binary).encode())
    for sample in sorted(index.labeled, key=lambda s: s.id):
        digest.update(sample.id.encode() + b"\0" + file_sha256(sample.mask).encode())
    return digest.hexdigest()[:16]


def load_feature_teacher(dinov2: str, labeled: str | None, local_files_only: bool, device,
                         binary_class: str | None = None):
    """A DINOv2 prototype teacher fitted on the labeled masks, or None (and why) when unavailable."""
    from ssl_seg.pseudo.features import Dinov2FeatureTeacher

    if not labeled:
        say("--dinov2 needs --labeled DATASET for its class prototypes; continuing with the model teacher alone")
        return None
    try:
        teacher = Dinov2FeatureTeacher.from_pretrained(dinov2, local_files_only=local_files_only, device=device)
    except ModelLoadError as exc:
        say(f"{exc}; continuing with the model teacher alone")
        return None
    teacher.fit(labeled_pairs(labeled, binary_class))
    return teacher


def load_sam_refiner(sam: str | None, local_files_only: bool, device):
    from ssl_seg.pseudo.sam import SamRefiner

    if not sam:
        say("--refine sam without --sam weights; falling back to superpixel refinement")
        return None
    try:
        return SamRefiner.from_pretrained(sam, local_files_only=local_files_only, device=device)
    except ModelLoadError as exc:
        say(f"{exc}; falling back to superpixel refinement")
        return None


def class_histogram_figure(class_pixels: np.ndarray):
    """Bar chart of pseudo-label pixel shares per class, ignored pixels last."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.0), dpi=100)
    names = [*CLASS_NAMES, "ignored"]
    ax.bar(names, class_pixels / max(class_pixels.sum(), 1), color=["#888", "#e63c32", "#3ca0e6", "#fad228", "#ccc"])
    ax.set_ylabel("share of pixels")
    ax.set_title("pseudo-label classes", fontsize=9)
    fig.tight_layout()
    return fig


def batching(device, images_at_once: int | None, batch_images: int | None) -> tuple[int, int]:
    """(images per teacher call, batches in flight) of ``pseudo_label`` on ``device`` (``torch.device``)."""
    # 8 images of tiles fill a GPU better than one (no GPU figure yet: experiments/PERFORMANCE.md)
    per_call = batch_images or min(8 if device.type == "cuda" else 1, images_at_once or 8)
    in_flight = max(1, (images_at_once or (2 * per_call if device.type == "cuda" else per_call)) // per_call)
    return per_call, in_flight


def pseudo_label(checkpoint: str | Path, images: str | Path | Sequence[str | Path], out: str | Path,
                 refine: str = "none", sam: str | None = None, dinov2: str | None = None, labeled: str | None = None,
                 binary_class: str | None = None,
                 local_files_only: bool = False, threshold: float = 0.9, tta: int = 1, tile_size: int = 512,
                 shard: tuple[int, int] = (0, 1), device: str = "auto", workers: int = 2,
                 progress: bool = True, class_balance: float = 0.0, superpixel_method: str = "slic",
                 images_at_once: int | None = None, batch_images: int | None = None) -> dict:
    """Pseudo-label every (shard's) image of ``images`` into ``out``; returns counts and the manifest summary.

    ``batch_images`` consecutive images of one size go through the teacher in one call, the tiles of all
    of them batched together, and come back to the host in one copy (default: 8 on CUDA, at most
    ``images_at_once``; 1 elsewhere). ``images_at_once`` images are labelled concurrently, in batches of
    ``batch_images`` (default: two batches on CUDA, so that one batch's CPU work (SAM prompts, superpixels)
    overlaps the next one's device work; one batch elsewhere). On CPU the files are the same bytes whatever
    the two are (tested); under CUDA's bf16 autocast another tile batch may round differently. An error
    within a batch leaves that batch's images unwritten; a rerun labels them.
    """
    if refine not in ("none", "superpixel", "sam"):
        raise ValueError(f"refine must be none, superpixel or sam, not {refine!r}")
    if superpixel_method not in SUPERPIXEL_METHODS:
        raise ValueError(f"superpixel method must be one of {', '.join(SUPERPIXEL_METHODS)}, not {superpixel_method!r}")
    for name, value in (("threshold", threshold), ("class balance", class_balance)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name.replace(' ', '-')} must lie in [0, 1], got {value}")
    if tta not in (1, 2, 8):
        raise ValueError(f"--tta must be 1, 2 or 8, got {tta}")
    for name, value in (("images-at-once", images_at_once), ("batch-images", batch_images)):
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    if images_at_once is not None and batch_images is not None and images_at_once < batch_images:
        raise ValueError(f"--images-at-once {images_at_once} is below --batch-images {batch_images}: a batch is "
                         "labelled at once; raise the one or lower the other")
    if sam and refine != "sam":
        say(f"--sam is used with --refine sam only; refining with {refine}")
    if labeled and not dinov2:
        say("--labeled is used with --dinov2 only; ignoring it")
    rank, world, local_rank = setup_distributed()
    if world > 1:  # under torchrun each rank takes its own shard
        shard = (rank, world)
    shard_index, shard_count = shard
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"--shard {shard_index}/{shard_count}: i must be in 0..n-1")
    device_ = resolve_device(device, local_rank)
    out = Path(out)
    with folder_lock(out, shard):  # a second run on this folder (or shard) is refused at once, not after its work
        all_paths = unlabeled_images(images)
        model, state = load_model(checkpoint, device_)

        feature_teacher = load_feature_teacher(dinov2, labeled, local_files_only, device_, binary_class) if dinov2 else None
        sam_refiner = load_sam_refiner(sam, local_files_only, device_) if refine == "sam" else None
        refiner = refine if refine != "sam" or sam_refiner is not None else "superpixel"
        if refiner == "superpixel" and superpixel_method != "slic":
            refiner = f"superpixel-{superpixel_method}"
        teacher_name = f"{Path(str(checkpoint)).resolve()}" + (f" + dinov2:{dinov2}" if feature_teacher else "")
        settings = {"teacher": teacher_name, "teacher_sha256": file_sha256(checkpoint_file(checkpoint)),
                    "dinov2": Path(dinov2).name if feature_teacher else None,  # the name, not the path: folders move
                    "dinov2_labeled": labeled_set_digest(labeled, binary_class) if feature_teacher else None,
                    "refiner": refiner + (f":{sam}" if sam_refiner else ""),
                    "threshold": threshold, "class_balance": class_balance, "tta": tta, "tile_size": tile_size,
                    "ignore_index": IGNORE_INDEX,
                    "class_names": list(CLASS_NAMES), "images_expected": len(all_paths)}

        if shard_count == 1:  # shards may share the folder: only a lone run may sweep it
            remove_stale_temporaries(out)
        check_same_settings(out, settings)
        paths = all_paths[shard_index::shard_count]
        # done = entry written (it is written last) and its two maps still there
        todo = [p for p in paths if not all((out / sub / f"{p.stem}{ext}").is_file() for sub, ext in
                                            (("entries", ".json"), ("masks", ".png"), ("confidence", ".png")))]
        if len(todo) < len(paths):
            check_same_images(sorted(set(paths) - set(todo)), out)
            say(f"resuming: {len(paths) - len(todo)} of {len(paths)} images already done")
        logs_to = summary_writer(out / "tb" / f"shard{shard_index}") if todo else contextlib.nullcontext()
        with logs_to as writer:
            stats = {"done": 0, "skipped": len(paths) - len(todo)}
            class_pixels = np.zeros(NUM_CLASSES + 1, np.int64)  # the last bin counts ignored pixels

            def refined(image: np.ndarray, labels: np.ndarray, confidence: np.ndarray) -> tuple:
                """(confidence, pseudo mask, refiner stats) of one image from the teacher's labels."""
                confidence = confidence.astype(np.float32)
                balanced = class_balanced_confidence(labels, confidence, threshold, class_balance)
                if refiner == "sam":
                    pseudo, info = sam_refiner.refine(image, labels, balanced, threshold=threshold)
                elif refiner.startswith("superpixel"):
                    pseudo, info = superpixel_refine(image, labels, balanced, threshold=threshold, method=superpixel_method)
                else:
                    pseudo, info = threshold_labels(labels, balanced, threshold), {"changed_pixels": 0}
                return confidence, pseudo, info

            def label_batch(images: list[np.ndarray]) -> list[tuple]:
                """``refined`` of each of ``images`` (one size): one teacher call for the tiles of all, one copy
                of their labels and confidences to the host."""
                probs = predict_proba(model, torch.cat([to_tensor(image, device_) for image in images]),
                                      tile_size=tile_size, tta=tta)
                if feature_teacher is not None:
                    from ssl_seg.pseudo.features import combine

                    merged = [combine(p, feature_teacher.predict_proba(image))
                              for p, image in zip(probs.cpu().numpy(), images)]
                    return [refined(image, labels, confidence) for image, (labels, confidence, _) in zip(images, merged)]
                confidence, labels = probs.max(dim=1)
                confidence, labels = confidence.cpu().numpy(), labels.to(torch.uint8).cpu().numpy()
                return [refined(image, labels[i], confidence[i]) for i, image in enumerate(images)]

            # Results are taken in order whatever the batch and images_at_once. PNG encoding runs on writer threads.
            per_call, in_flight = batching(device_, images_at_once, batch_images)
            labelers = ThreadPoolExecutor(max_workers=in_flight)
            writers = ThreadPoolExecutor(max_workers=min(16, 2 * in_flight * per_call))  # a batch ends at once
            labelling, pending, unreadable, waiting = deque(), deque(), None, None
            images_in = iter(decoded_images(todo, workers))
            bar = tqdm(total=len(todo), desc=f"pseudo-label {shard_index}/{shard_count}", disable=not progress)

            def next_batch() -> list[tuple[Path, np.ndarray]]:
                """Up to ``per_call`` next images of one size; an image of another size opens the next batch."""
                nonlocal unreadable, waiting
                batch = [waiting] if waiting is not None else []
                waiting = None
                while unreadable is None and len(batch) < per_call:
                    try:
                        path, image = next(images_in)
                    except StopIteration:
                        break
                    except DataError as exc:  # raised once the images before it are done and written
                        unreadable = exc
                        break
                    if batch and image.shape != batch[0][1].shape:
                        waiting = (path, image)
                        break
                    batch.append((path, image))
                return batch

            def finished_images():
                """(path, image, (confidence, pseudo, info)) of each image, in order."""
                while True:
                    while len(labelling) < in_flight and (batch := next_batch()):
                        labelling.append((batch, labelers.submit(label_batch, [image for _, image in batch])))
                    if not labelling:
                        if unreadable is not None:
                            raise unreadable
                        return
                    batch, job = labelling.popleft()
                    for (path, image), result in zip(batch, job.result()):
                        yield path, image, result

            try:
                for i, (path, image, (confidence, pseudo, info)) in enumerate(finished_images()):
                    counts = np.bincount(pseudo.ravel(), minlength=256)
                    class_pixels += np.append(counts[:NUM_CLASSES], counts[IGNORE_INDEX])
                    entry = {
                        "image": manifest_image_path(path, out), "mask": f"masks/{path.stem}.png",
                        "confidence": f"confidence/{path.stem}.png",
                        "pixels": int(pseudo.size), "confident_fraction": float(1 - counts[IGNORE_INDEX] / pseudo.size),
                        "class_fractions": {name: float(counts[c] / pseudo.size) for c, name in enumerate(CLASS_NAMES)},
                        "changed_pixels": int(info.get("changed_pixels", 0)), "teacher": teacher_name, "refiner": refiner,
                        **{key: settings[key] for key in SETTING_KEYS},
                    }
                    pending.append(writers.submit(write_outputs, out, path.stem, pseudo, confidence, entry))
                    while len(pending) > max(8, 2 * per_call):
                        pending.popleft().result()
                    stats["done"] += 1
                    bar.update()

                    step = stats["skipped"] + i  # a resumed run goes on after the images of the earlier ones
                    writer.add_scalar("pseudo/confident_fraction", entry["confident_fraction"], step)
                    writer.add_scalar("pseudo/changed_pixels", entry["changed_pixels"], step)
                    for c, name in enumerate(CLASS_NAMES):
                        writer.add_scalar(f"pseudo/class_fraction/{name}", entry["class_fractions"][name], step)
                    if step < 4:
                        writer.add_image(f"pseudo/overlay_{step}", overlay(image, pseudo), 0, dataformats="HWC")
                    if step % 16 == 0:
                        writer.add_histogram("pseudo/confidence", confidence[::4, ::4].ravel(), step)
            finally:  # on any stop, the images already labelled are still written
                bar.close()
                labelers.shutdown(cancel_futures=True)
                writers.shutdown()
            for job in pending:
                job.result()  # a failed write surfaces here
            if writer is not None:
                writer.add_figure("pseudo/class_histogram", class_histogram_figure(class_pixels), 0)

        if world > 1:
            dist.barrier()
        manifest = merge_manifest(out, settings) if rank == 0 else {}
        summary = manifest.get("summary", {})
        if summary and summary["images"] >= len(all_paths) and summary["confident_fraction"] < FEW_CONFIDENT:
            disagreeing = (" (or without --dinov2: pixels where the two teachers disagree are never kept)"
                           if feature_teacher else "")
            say(f"only {summary['confident_fraction']:.2%} of the pixels in {out} kept a label (confidence threshold "
                f"{threshold}), so a student would learn little from them: pseudo-label again with a lower --threshold"
                f"{disagreeing}, or fine-tune the teacher longer")
        return {**stats, **summary}
