"""``ssl-seg export``: a trained checkpoint as a model folder that plain transformers loads.

SegFormer checkpoints become a ``SegformerForSemanticSegmentation`` folder (``config.json`` with the
maceral ``id2label``, ``model.safetensors``, ``preprocessor_config.json``) that ``from_pretrained(DIR)`` loads
without ssl_seg, ready for ``push_to_hub``; ``ssl_seg.json`` beside them records where it came from. DINOv2
checkpoints (a backbone with ssl_seg's convolutional head, which transformers has no class for) carry their
model file, ``AutoModelForSemanticSegmentation.from_pretrained(DIR, trust_remote_code=True)``. The U-Nets
have no transformers counterpart.

    ssl-seg export --checkpoint runs/student/best.pth --out exports/maceral-segformer
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from ssl_seg import CLASS_NAMES, IGNORE_INDEX, __version__
from ssl_seg.data.io import fsync_folder, output_folder
from ssl_seg.errors import CheckpointError
from ssl_seg.models.segformer import IMAGENET_MEAN, IMAGENET_STD
from ssl_seg.train.checkpoint import checkpoint_file, file_sha256, load_checkpoint, model_from_checkpoint

USAGE = """# {{name}}

{what} for kerogen maceral segmentation ({{classes}}), trained with
ssl_seg {{version}} and exported by `ssl-seg export`.

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, {loader}

processor = AutoImageProcessor.from_pretrained("{{name}}")
model = {loader}.from_pretrained("{{name}}"{options}).eval()
image = Image.open("section.jpg").convert("RGB")
with torch.no_grad():
    logits = model(**processor(image, return_tensors="pt")).logits{upsampling}
mask = logits.argmax(dim=1)[0]  # {{codes}}
```

ssl-seg's own `predict` also tiles large images and can average flipped views (`--tta`).
"""
SEGFORMER_UPSAMPLING = """  # 1/4 of the image's size
logits = torch.nn.functional.interpolate(logits, size=image.size[::-1], mode="bilinear", align_corners=False)"""
MODEL_CARDS = {
    "segformer": USAGE.format(what="A SegFormer", loader="SegformerForSemanticSegmentation", options="",
                              upsampling=SEGFORMER_UPSAMPLING),
    "dinov2": USAGE.format(what="A DINOv2 with a convolutional head", loader="AutoModelForSemanticSegmentation",
                           options=", trust_remote_code=True", upsampling="  # at the image's size"),
}


def dinov2_for_transformers(ours):
    """ssl_seg's DINOv2 segmenter as the ``trust_remote_code`` class whose file the export carries."""
    from ssl_seg.models.hub_code.modeling_maceral_dinov2 import (MaceralDinov2Config,
                                                                 MaceralDinov2ForSemanticSegmentation)

    MaceralDinov2Config.register_for_auto_class()  # save_pretrained then copies the file and writes auto_map
    MaceralDinov2ForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
    config = MaceralDinov2Config(backbone_config=ours.hf_config.to_dict(), head_channels=ours.head[1].out_channels,
                                 num_labels=ours.num_classes)
    model = MaceralDinov2ForSemanticSegmentation(config)
    model.load_state_dict(ours.state_dict())  # the same backbone.* and head.* names
    return model.eval()


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the transformers folder of ``checkpoint`` (a .pth or a run folder) to the new folder ``out``."""
    path = checkpoint_file(checkpoint)
    out = output_folder(out)
    if out.is_dir() and any(out.iterdir()):
        raise CheckpointError(f"--out {out} already holds files; export into a new (or empty) folder")
    state = load_checkpoint(path)
    family = state["model_spec"].get("family")
    if family not in ("segformer", "dinov2"):
        raise CheckpointError(f"checkpoint {path} holds a {family} model, which has no transformers class to load "
                              "into (export covers the segformer and dinov2 families); use it with `ssl-seg predict`")
    ours = model_from_checkpoint(state, path).float().eval()
    model = ours.model if family == "segformer" else dinov2_for_transformers(ours)
    model.config.id2label = dict(enumerate(CLASS_NAMES))
    model.config.label2id = {name: code for code, name in enumerate(CLASS_NAMES)}
    from transformers import SegformerImageProcessor

    # ssl_seg feeds [0, 1] RGB normalised by the ImageNet mean and std at the image's own size
    processor = SegformerImageProcessor(do_resize=False, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
                                        do_reduce_labels=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        model.save_pretrained(temp, safe_serialization=True)
        processor.save_pretrained(temp)
        record = {"ssl_seg_version": __version__, "checkpoint": str(path.resolve()),
                  "checkpoint_sha256": file_sha256(path), "step": state.get("step"),
                  "model": state.get("config", {}).get("model"), "class_names": list(CLASS_NAMES),
                  "ignore_index": IGNORE_INDEX,
                  "logits": ("1/4 of the input size; upsample bilinearly (align_corners=False) to it, then argmax"
                             if family == "segformer" else "at the input size; argmax")}
        (temp / "ssl_seg.json").write_text(json.dumps(record, indent=2) + "\n")
        codes = ", ".join(f"{code} {name}" for code, name in enumerate(CLASS_NAMES))
        (temp / "README.md").write_text(MODEL_CARDS[family].format(name=out.name, classes=", ".join(CLASS_NAMES[1:]),
                                                     version=__version__, codes=codes))
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(temp, out)
        fsync_folder(out.parent)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return out
