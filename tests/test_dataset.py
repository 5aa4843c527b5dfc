"""CropDataset determinism by draw index, unlabeled/pseudo masks, and DrawSampler sharding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ssl_seg import IGNORE_INDEX
from ssl_seg.data.dataset import CropDataset, DrawSampler
from ssl_seg.data.io import DataError, save_png
from ssl_seg.data.layout import Sample


def _write_sample(folder: Path, name: str, height: int, width: int, seed: int, binary: bool = False) -> Sample:
    rng = np.random.default_rng(seed)
    image = folder / f"{name}.png"
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(image)
    mask = folder / f"{name}_gt.npy"
    if binary:
        np.save(mask, np.where(rng.random((height, width)) > 0.5, 255, 0).astype(np.uint8))
        return Sample(name, image, mask, binary_class=2)
    np.save(mask, rng.integers(0, 4, (height, width), dtype=np.uint8))
    return Sample(name, image, mask)


@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    return [
        _write_sample(tmp_path, "a", 40, 50, 0),
        _write_sample(tmp_path, "b", 40, 60, 1, binary=True),
        _write_sample(tmp_path, "c", 20, 20, 2),  # smaller than the crop: padded
    ]


def _same(first: dict, second: dict) -> bool:
    return torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])


def test_item_format(samples: list[Sample]) -> None:
    dataset = CropDataset(samples, crop_size=24, seed=3)
    assert len(dataset) == 3
    item = dataset[5]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 24, 24)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (24, 24)
    assert item["index"] == 5
    assert set(item["mask"].unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}


def test_item_is_a_pure_function_of_seed_and_k(samples: list[Sample]) -> None:
    first = CropDataset(samples, crop_size=16, seed=7)
    fresh = CropDataset(samples, crop_size=16, seed=7, cache=False)
    for k in [0, 1, 2, 3, 10, 1000, 123456]:  # well beyond len: later epochs
        assert _same(first[k], fresh[k])
    # Order of access does not matter (resuming mid-run).
    assert _same(fresh[1000], first[1000]) and _same(fresh[0], first[0])


def test_items_differ_across_k_and_seed(samples: list[Sample]) -> None:
    dataset = CropDataset(samples, crop_size=16, seed=0)
    items = [dataset[k] for k in range(12)]
    distinct = {(item["image"].numpy().tobytes()) for item in items}
    assert len(distinct) == len(items)
    other_seed = CropDataset(samples, crop_size=16, seed=1)
    assert not all(_same(dataset[k], other_seed[k]) for k in range(6))


def test_each_epoch_visits_every_sample_once(samples: list[Sample]) -> None:
    dataset = CropDataset(samples, crop_size=16, seed=0)
    orders = []
    for epoch in range(4):
        order = [dataset.sample_index(k) for k in range(epoch * 3, epoch * 3 + 3)]
        assert sorted(order) == [0, 1, 2]
        orders.append(tuple(order))
    assert len(set(orders)) > 1  # reshuffled between epochs


def test_binary_mask_uses_sample_class_and_padding_is_ignored(samples: list[Sample]) -> None:
    dataset = CropDataset(samples, crop_size=32, seed=0)
    for k in range(9):
        item = dataset[k]
        name = samples[dataset.sample_index(k)].id
        values = set(item["mask"].unique().tolist())
        if name == "b":
            assert values <= {0, 2}
        if name == "c":  # 20x20 in a 32x32 crop
            assert IGNORE_INDEX in values
            assert torch.all(item["image"][:, item["mask"] == IGNORE_INDEX] == 0)


def test_valid_map_is_zero_exactly_on_the_padding(tmp_path: Path) -> None:
    # unlabeled images have an all-ignore mask, so only ``valid`` tells padding from image
    image = tmp_path / "small.png"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(image)
    dataset = CropDataset([Sample("small", image)], crop_size=32)
    for k in range(4):
        item = dataset[k]
        assert item["valid"].dtype == torch.uint8 and item["valid"].shape == (32, 32)
        assert int(item["valid"].sum()) == 20 * 30
        assert torch.equal(item["valid"] == 1, item["image"][0] == 200)
    big = CropDataset([Sample("small", image)], crop_size=16)[0]
    assert torch.all(big["valid"] == 1)


def test_unlabeled_and_pseudo_samples(tmp_path: Path) -> None:
    image = tmp_path / "u.png"
    Image.fromarray(np.full((20, 20, 3), 9, np.uint8)).save(image)
    unlabeled = CropDataset([Sample("u", image)], crop_size=16)
    assert torch.all(unlabeled[0]["mask"] == IGNORE_INDEX)

    save_png(tmp_path / "u_pseudo.png", np.where(np.eye(20, dtype=bool), 255, 0).astype(np.uint8))
    pseudo = CropDataset([Sample("u", image, tmp_path / "u_pseudo.png")], crop_size=20, pseudo=True)
    assert set(pseudo[0]["mask"].unique().tolist()) == {0, IGNORE_INDEX}
    with pytest.raises(DataError, match="u_pseudo.png"):
        CropDataset([Sample("u", image, tmp_path / "u_pseudo.png")], crop_size=16)[0]


def test_mask_size_mismatch_is_refused(tmp_path: Path) -> None:
    sample = _write_sample(tmp_path, "a", 20, 30, 0)
    np.save(sample.mask, np.zeros((30, 20), np.uint8))
    with pytest.raises(DataError, match="a_gt.npy"):
        CropDataset([sample], crop_size=8)[0]


def test_bad_arguments(samples: list[Sample]) -> None:
    with pytest.raises(ValueError):
        CropDataset([], crop_size=8)
    with pytest.raises(IndexError):
        CropDataset(samples, crop_size=8)[-1]


@pytest.mark.parametrize(("start", "count", "world_size"), [(0, 10, 1), (5, 17, 3), (100, 3, 4), (7, 0, 2)])
def test_draw_sampler_shards_cover_range_once(start: int, count: int, world_size: int) -> None:
    shards = [list(DrawSampler(start, count, rank, world_size)) for rank in range(world_size)]
    for rank, shard in enumerate(shards):
        assert len(DrawSampler(start, count, rank, world_size)) == len(shard)
    merged = sorted(k for shard in shards for k in shard)
    assert merged == list(range(start, start + count))


def test_draw_sampler_rejects_bad_rank() -> None:
    with pytest.raises(ValueError):
        DrawSampler(0, 10, rank=2, world_size=2)
    with pytest.raises(ValueError):
        DrawSampler(-1, 10)


def test_resume_with_dataloader(samples: list[Sample]) -> None:
    dataset = CropDataset(samples, crop_size=16, seed=5)

    def draws(start: int, count: int) -> list[torch.Tensor]:
        loader = DataLoader(dataset, batch_size=2, sampler=DrawSampler(start, count))
        return [batch["image"] for batch in loader]

    whole = draws(0, 8)
    resumed = draws(0, 4) + draws(4, 4)
    assert all(torch.equal(a, b) for a, b in zip(whole, resumed))
