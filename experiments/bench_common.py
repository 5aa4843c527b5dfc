"""Shared helpers of the benchmark scripts in ``experiments/``.

Device choice and description, stage timers that synchronise CUDA, synthetic JPEG sets at a
given size, random-weight models of real sizes (saved where the package's loaders read them),
FLOP counting, the device's peak throughput, and the printed table + JSON every script writes.

Example:
    >>> timer = StageTimer(torch.device("cpu"))
    >>> with timer.stage("work"):
    ...     _ = sum(range(1000))
    >>> list(timer.seconds)
    ['work']
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

# The benchmark scripts run as `python experiments/<name>.py`: make `ssl_seg` importable from a checkout too.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ssl_seg import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from ssl_seg.cli import parse_size  # noqa: E402,F401  (the scripts' --size flag)
from ssl_seg.data.io import save_json  # noqa: E402

try:  # transformers' load/save progress bars would interleave with the tables
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except ImportError:
    pass

# Dense (no sparsity) tensor-core peaks from the vendors' datasheets, TFLOP/s, by dtype.
# Matched against torch.cuda.get_device_name() in order: the first key contained in the name wins.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("GH200", {"bf16": 989.0, "fp32": 67.0}),
    ("B200", {"bf16": 2250.0, "fp32": 80.0}),
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("A10G", {"bf16": 70.0, "fp32": 31.2}),
    ("L40S", {"bf16": 362.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp32": 30.3}),
    ("RTX 4090", {"bf16": 165.0, "fp32": 82.6}),
]

# Random-weight stand-ins of the real backbones (same FLOPs as the pretrained ones).
SEGFORMER_SIZES = {  # nvidia/mit-b*: depths, hidden sizes, decoder width
    "b0": ([2, 2, 2, 2], [32, 64, 160, 256], 256),
    "b1": ([2, 2, 2, 2], [64, 128, 320, 512], 256),
    "b2": ([3, 4, 6, 3], [64, 128, 320, 512], 768),
    "b5": ([3, 6, 40, 3], [64, 128, 320, 512], 768),
}
DINOV2_SIZES = {"small": (384, 6, 1536), "base": (768, 12, 3072)}  # hidden, heads, MLP width; 12 layers
MODEL_CHOICES = ["segformer-tiny", "dinov2-tiny", *(f"segformer-{k}" for k in SEGFORMER_SIZES),
                 *(f"dinov2-{k}" for k in DINOV2_SIZES)]


# ----------------------------------------------------------------------------- device


def pick_device(name: str) -> torch.device:
    """``auto`` takes CUDA when torch sees it; asking for CUDA without one is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no CUDA device; use --device cpu (or auto)")
    return torch.device(name)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def library_versions() -> dict[str, str | None]:
    """transformers, kornia and torchvision versions (None where not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("transformers", "kornia", "torchvision"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def describe_device(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: printed first and stored in the JSON."""
    info = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "python": platform.python_version(), **library_versions(), "cpu": cpu_model(),
            "cpu_cores": os.cpu_count()}
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["bf16_autocast"] = True
    else:
        info["bf16_autocast"] = False  # the package uses bf16 autocast on CUDA only
    return info


def peak_tflops(device: torch.device, dtype: str = "bf16") -> float | None:
    """The datasheet dense peak of ``device`` for ``dtype``, or None when unknown (CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return peaks.get(dtype)
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ----------------------------------------------------------------------------- timing


class StageTimer:
    """Seconds per named stage; synchronises CUDA at both ends so GPU work lands in its stage."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def wrap(self, name: str, function: Callable) -> Callable:
        """``function`` timed as ``name`` on every call."""

        def timed(*args, **kwargs):
            with self.stage(name):
                return function(*args, **kwargs)

        return timed

    def wrap_iterator(self, name: str, iterable, reset_at: int | None = None) -> Iterator:
        """Time spent waiting for each item of ``iterable`` (e.g. a background decoder).

        ``reset_at``: clear all stages just before item ``reset_at`` (0-based) is requested, so that
        a timed window opens where the consumer's loop starts on that item.
        """
        iterator = iter(iterable)
        for index in itertools.count():
            if index == reset_at:
                self.reset()
            with self.stage(name):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def timed(device: torch.device, function: Callable, *args, **kwargs) -> tuple[Any, float]:
    """(result, seconds) of one call, CUDA synchronised."""
    sync(device)
    start = time.perf_counter()
    result = function(*args, **kwargs)
    sync(device)
    return result, time.perf_counter() - start


# ----------------------------------------------------------------------------- data


COPY_MARK = "_copy"


def original_id(image_id: str) -> str:
    """The rendered scene a copy of ``synthetic_dataset`` was made from (itself for an original)."""
    return image_id.split(COPY_MARK)[0]


def synthetic_dataset(root: str | Path, size: tuple[int, int], labeled: int = 0, unlabeled: int = 0,
                      unique: int = 8, seed: int = 0) -> Path:
    """A procedural SS2-layout dataset under ``root`` with ``labeled`` + ``unlabeled`` JPEGs of ``size``.

    Only ``unique`` scenes per split are rendered (rendering a 1024x1360 scene takes about a
    second); the rest are byte copies named ``<id>_copyNNNNN``, which decode at exactly the same cost.
    """
    from ssl_seg.data.synthetic import write_dataset

    root = Path(root)
    write_dataset(root, labeled=min(labeled, unique), unlabeled=min(unlabeled, unique), test=0,
                  size=size, seed=seed, progress=False)
    for split, count, masks in (("labeled", labeled, "labels"), ("unlabeled", unlabeled, None)):
        originals = sorted(p for p in (root / "train" / split).glob("*.JPG") if COPY_MARK not in p.stem)
        for index in range(len(originals), count):
            source = originals[index % len(originals)]
            copy_id = f"{source.stem}{COPY_MARK}{index:05d}"
            shutil.copyfile(source, root / "train" / split / f"{copy_id}.JPG")
            if masks:
                shutil.copyfile(root / "train" / masks / f"{source.stem}_gt.npy",
                                root / "train" / masks / f"{copy_id}_gt.npy")
    return root


# ----------------------------------------------------------------------------- models


def random_segmenter(name: str) -> torch.nn.Module:
    """A random-weight segmentation model of the package by size name (see MODEL_CHOICES)."""
    from transformers import Dinov2Config, SegformerConfig

    from ssl_seg.models import Dinov2Segmenter, SegformerSegmenter, build_model

    if name in ("segformer-tiny", "dinov2-tiny"):
        return build_model(name, NUM_CLASSES)
    family, size = name.split("-", 1)
    if family == "segformer" and size in SEGFORMER_SIZES:
        depths, hidden, decoder = SEGFORMER_SIZES[size]
        config = SegformerConfig(num_labels=NUM_CLASSES, depths=depths, hidden_sizes=hidden,
                                 decoder_hidden_size=decoder, semantic_loss_ignore_index=255)
        return SegformerSegmenter.from_config(config)
    if family == "dinov2" and size in DINOV2_SIZES:
        hidden, heads, mlp = DINOV2_SIZES[size]
        config = Dinov2Config(hidden_size=hidden, num_hidden_layers=12, num_attention_heads=heads,
                              intermediate_size=mlp, patch_size=14, image_size=518)
        return Dinov2Segmenter.from_config(config, NUM_CLASSES)
    raise SystemExit(f"unknown model {name!r}; choose one of: {', '.join(MODEL_CHOICES)}")


def trainer_model_args(name: str, folder: str | Path) -> dict[str, Any]:
    """Config keys that make ``ssl_seg.train.loop.train`` build ``name`` with random weights.

    The built-in tiny models need nothing; the real sizes are saved with ``save_pretrained``
    into ``folder`` and loaded from there as if they were downloaded weights.
    """
    if name in ("segformer-tiny", "dinov2-tiny"):
        return {"model": name}
    model = random_segmenter(name)
    folder = Path(folder) / name
    if name.startswith("segformer"):
        model.model.save_pretrained(folder)
    else:
        model.backbone.save_pretrained(folder)
    return {"model": name.split("-")[0], "pretrained": str(folder), "local_files_only": True}


def write_teacher_checkpoint(name: str, path: str | Path, seed: int = 0) -> Path:
    """A random-weight teacher in the checkpoint format ``ssl_seg.train.checkpoint.load_model`` reads."""
    from ssl_seg.models import model_spec
    from ssl_seg.train.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = random_segmenter(name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": model.state_dict(), "model_spec": model_spec(model), "step": 0,
                           "mode": "finetune", "class_names": list(CLASS_NAMES), "config": {"model": name},
                           "best_score": -1.0, "best_step": -1})
    return path


def sam_config(name: str):
    """``vit-b``: SAM ViT-B sizes (facebook/sam-vit-base); ``tiny``: the test-sized SAM."""
    from ssl_seg.pseudo.sam import tiny_sam_config, vit_b_sam_config

    if name == "vit-b":
        return vit_b_sam_config()
    if name == "tiny":
        return tiny_sam_config()
    raise SystemExit(f"unknown SAM size {name!r}; choose vit-b or tiny")


def write_random_sam(name: str, folder: str | Path, seed: int = 0) -> Path:
    """A random-weight SamModel saved with ``save_pretrained``: loads like a downloaded SAM."""
    from transformers import SamModel

    torch.manual_seed(seed)
    folder = Path(folder)
    SamModel(sam_config(name)).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- FLOPs


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(function: Callable, *args, **kwargs) -> tuple[Any, int]:
    """(result, FLOPs) of one call, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Counts matrix multiplies, convolutions and attention (one multiply-add = 2 FLOPs);
    elementwise work is not counted, as in the usual model-FLOPs convention. torch's table
    lacks the CPU fused attention kernel, so it is added here (else CPU counts miss attention).
    """
    from torch.utils.flop_counter import FlopCounterMode

    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    custom = {cpu_sdpa: _sdpa_flops} if cpu_sdpa is not None else {}
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        result = function(*args, **kwargs)
    return result, int(counter.get_total_flops())


# ----------------------------------------------------------------------------- output


def common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file as well")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU in seconds: checks the script runs")
    parser.add_argument("--workdir", type=Path,
                        help="keep the synthetic data and runs here (default: a temporary folder, removed)")
    return parser


@contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    """``path`` (created, kept) or a temporary folder removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ssl_seg_bench_") as tmp:
        yield Path(tmp)


def start(title: str, device_name: str) -> tuple[torch.device, dict[str, Any]]:
    """The device a script runs on and its description, with the script's header printed."""
    device = pick_device(device_name)
    info = describe_device(device)
    print_header(title, info)
    return device, info


def print_header(title: str, info: dict[str, Any]) -> None:
    print(f"== {title}")
    print(f"device: {info['device']} | torch {info['torch']}"
          + (f" | CUDA {info['cuda']} | bf16 autocast" if info.get("cuda") else " | fp32"), flush=True)


def print_table(rows: list[list[Any]], headers: list[str]) -> None:
    """A plain aligned text table; floats get 4 significant digits."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    text = [[cell(v) for v in row] for row in [headers, *rows]]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    for index, row in enumerate(text):
        print("  ".join(value.ljust(width) if i == 0 else value.rjust(width)
                        for i, (value, width) in enumerate(zip(row, widths))))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def finish(result: dict[str, Any], json_path: Path | None) -> None:
    """Write ``result`` to ``json_path`` atomically (when given) and say where."""
    if json_path is not None:
        save_json(json_path, to_builtin(result))
        print(f"figures written to {json_path}")


def to_builtin(value: Any) -> Any:
    """numpy scalars and tuples -> JSON-friendly Python values."""
    if isinstance(value, dict):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")
