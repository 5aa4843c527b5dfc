"""Dataset layout discovery (SS2, generic, plain images), binary_classes.csv and validate()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_seg.data.io import DataError
from ssl_seg.data.layout import DatasetIndex, Sample, discover, list_images, validate


def _image(path: Path, height: int = 8, width: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(path)
    return path


def _mask(path: Path, array: np.ndarray | None = None, height: int = 8, width: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((height, width), np.uint8) if array is None else array
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        Image.fromarray(array, mode="L").save(path)
    return path


def _binary(height: int = 8, width: int = 12) -> np.ndarray:
    array = np.zeros((height, width), np.uint8)
    array[2:5, 3:7] = 255
    return array


@pytest.fixture
def ss2_root(tmp_path: Path) -> Path:
    root = tmp_path / "ss2"
    for image_id in ("aaa111", "bbb222"):
        _image(root / "train" / "labeled" / f"{image_id}.JPG")
        _mask(root / "train" / "labels" / f"{image_id}_gt.npy")
    for image_id in ("ccc333", "ddd444", "eee555"):
        _image(root / "train" / "unlabeled" / f"{image_id}.JPG")
    _image(root / "test" / "fff666.JPG")
    return root


@pytest.fixture
def generic_root(tmp_path: Path) -> Path:
    root = tmp_path / "generic"
    _image(root / "images" / "a.png")
    _mask(root / "masks" / "a.png")
    _image(root / "images" / "b.jpg")
    _mask(root / "masks" / "b_gt.npy")
    _image(root / "images" / "c.tif")  # no mask: unlabeled
    _image(root / "unlabeled" / "d.bmp")
    _image(root / "test" / "e.jpeg")
    return root


# --------------------------------------------------------------------------- SS2


def test_discover_ss2(ss2_root: Path) -> None:
    index = discover(ss2_root)
    assert index.layout == "ss2"
    assert [s.id for s in index.labeled] == ["aaa111", "bbb222"]
    assert index.labeled[0].mask == ss2_root / "train" / "labels" / "aaa111_gt.npy"
    assert [p.stem for p in index.unlabeled] == ["ccc333", "ddd444", "eee555"]
    assert [p.name for p in index.test] == ["fff666.JPG"]
    assert index.summary() == f"layout ss2 at {ss2_root}: 2 labeled, 3 unlabeled, 1 test"
    validate(index)


def test_discover_ss2_png_labels_and_optional_folders(tmp_path: Path) -> None:
    root = tmp_path / "ss2"
    _image(root / "train" / "labeled" / "x.JPG")
    _mask(root / "train" / "labels" / "x_gt.png")
    index = discover(root)
    assert index.labeled[0].mask.suffix == ".png"
    assert index.unlabeled == [] and index.test == []


def test_ss2_labeled_image_without_label(ss2_root: Path) -> None:
    _image(ss2_root / "train" / "labeled" / "zzz999.JPG")
    with pytest.raises(DataError, match=r"zzz999\.JPG.*no mask"):
        discover(ss2_root)


def test_ss2_label_without_image(ss2_root: Path) -> None:
    _mask(ss2_root / "train" / "labels" / "ghost_gt.npy")
    with pytest.raises(DataError, match=r"ghost_gt\.npy.*no image"):
        discover(ss2_root)


def test_ss2_missing_labels_folder(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "labeled" / "x.JPG")
    with pytest.raises(DataError, match="labels"):
        discover(tmp_path)


# --------------------------------------------------------------------------- generic


def test_discover_generic(generic_root: Path) -> None:
    index = discover(generic_root)
    assert index.layout == "generic"
    assert [(s.id, s.mask.name) for s in index.labeled] == [("a", "a.png"), ("b", "b_gt.npy")]
    assert [p.name for p in index.unlabeled] == ["c.tif", "d.bmp"]
    assert [p.name for p in index.test] == ["e.jpeg"]
    validate(index)


def test_generic_mask_without_image(generic_root: Path) -> None:
    _mask(generic_root / "masks" / "orphan.png")
    with pytest.raises(DataError, match=r"orphan\.png.*no image"):
        discover(generic_root)


def test_generic_labels_folder_name(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.JPG")
    _mask(tmp_path / "labels" / "a_gt.npy")
    assert [s.id for s in discover(tmp_path).labeled] == ["a"]


def test_generic_without_masks_is_all_unlabeled(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    index = discover(tmp_path)
    assert index.layout == "generic" and index.labeled == [] and len(index.unlabeled) == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [("images/a.jpg", "images/a.png"), ("unlabeled/c.png", "images/c.tif")],
    ids=["same-folder", "unlabeled-across-folders"],
)
def test_duplicate_image_stems(generic_root: Path, first: str, second: str) -> None:
    _image(generic_root / first)
    _image(generic_root / second)
    with pytest.raises(DataError, match="share the id"):
        discover(generic_root)


def test_two_masks_for_one_image(generic_root: Path) -> None:
    _mask(generic_root / "masks" / "a_gt.npy")  # a.png is there too
    with pytest.raises(DataError, match="both belong to image id 'a'"):
        discover(generic_root)


@pytest.mark.parametrize("mask_name", ["core_gt.png", "core_gt_gt.npy"])
def test_an_image_id_ending_in_gt_finds_its_mask(tmp_path: Path, mask_name: str) -> None:
    _image(tmp_path / "images" / "core_gt.png")
    _mask(tmp_path / "masks" / mask_name)
    _image(tmp_path / "images" / "plain.png")
    _mask(tmp_path / "masks" / "plain_gt.npy")
    labeled = [(s.id, s.mask.name) for s in discover(tmp_path).labeled]
    assert labeled == [("core_gt", mask_name), ("plain", "plain_gt.npy")]


def test_ids_with_and_without_gt_take_their_ss2_masks(ss2_root: Path) -> None:
    _image(ss2_root / "train" / "labeled" / "aaa111_gt.JPG")  # beside aaa111.JPG
    _mask(ss2_root / "train" / "labels" / "aaa111_gt_gt.npy")
    labeled = [(s.id, s.mask.name) for s in discover(ss2_root).labeled]
    assert labeled == [("aaa111", "aaa111_gt.npy"), ("aaa111_gt", "aaa111_gt_gt.npy"), ("bbb222", "bbb222_gt.npy")]


def test_a_jpeg_mask_is_refused_not_skipped(generic_root: Path) -> None:
    _image(generic_root / "masks" / "c.jpg")  # c.tif has no other mask: it would silently count as unlabeled
    with pytest.raises(DataError, match=r"mask .*c\.jpg: JPEG compression .* fix: save the masks as \.npy or \.png"):
        discover(generic_root)


def test_hidden_temp_files_are_skipped(generic_root: Path) -> None:
    _image(generic_root / "images" / ".a.tmp-1234.png")
    _mask(generic_root / "masks" / ".b.tmp-1234.png")
    assert len(discover(generic_root).labeled) == 2


# --------------------------------------------------------------------------- plain images and refusals


def test_plain_image_folder(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "notes.txt"):
        if name.endswith(".txt"):
            (tmp_path / name).write_text("x")
        else:
            _image(tmp_path / name)
    index = discover(tmp_path)
    assert index.layout == "images" and index.labeled == [] and index.test == []
    assert [p.name for p in index.unlabeled] == ["a.jpg", "b.PNG"]


def test_real_folders(real_data: Path) -> None:
    assert discover(real_data / "ss1_unlabeled").layout == "images"
    coal = discover(real_data / "coal_maceral")
    assert coal.layout == "generic" and len(coal.labeled) == 6
    validate(coal)
    example = discover(real_data / "ss2_example", binary_class="liptinite")
    assert example.labeled[0].binary_class == 3
    validate(example)
    with pytest.raises(DataError, match="vyqade_gt.npy"):
        validate(discover(real_data / "ss2_example"))


@pytest.mark.parametrize("case", ["missing", "empty", "unrecognised", "empty-layout"])
def test_discover_refuses_unrecognisable_roots(tmp_path: Path, case: str) -> None:
    root = tmp_path / "root"
    if case != "missing":
        root.mkdir()
    if case == "unrecognised":
        (root / "readme.txt").write_text("hello")
    if case == "empty-layout":
        (root / "train" / "labeled").mkdir(parents=True)
    with pytest.raises(DataError) as caught:
        discover(root)
    message = str(caught.value)
    assert str(root) in message and "train/labeled" in message and "images/" in message and "\n" not in message


def test_list_images_names_the_folder_of_a_file_and_no_mask_folder(tmp_path: Path) -> None:
    image = _image(tmp_path / "root" / "images" / "a.png")
    _mask(tmp_path / "root" / "masks" / "a.png")
    with pytest.raises(DataError, match=rf"is a file; fix: pass the folder that holds it, {image.parent}"):
        list_images(image)
    with pytest.raises(DataError, match="no images found") as info:
        list_images(tmp_path / "root")
    assert str(image.parent) in str(info.value) and "masks" not in str(info.value)


def test_list_images(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        list_images(tmp_path / "nope")
    with pytest.raises(DataError, match=r"\.tiff"):
        list_images(tmp_path)
    _image(tmp_path / "b.TIFF")
    _image(tmp_path / "a.jpeg")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpeg", "b.TIFF"]


# --------------------------------------------------------------------------- binary classes


def test_binary_class_per_folder_and_csv_override(tmp_path: Path) -> None:
    for image_id in ("p", "q", "r"):
        _image(tmp_path / "images" / f"{image_id}.jpg")
        _mask(tmp_path / "masks" / f"{image_id}.npy", _binary())
    (tmp_path / "masks" / "binary_classes.csv").write_text("id,class\np,vitrinite\n\n# comment\nq, 1\n")
    index = discover(tmp_path, binary_class=3)
    assert {s.id: s.binary_class for s in index.labeled} == {"p": 2, "q": 1, "r": 3}
    validate(index)
    assert set(np.unique(index.labeled[0].read_mask()).tolist()) == {0, 2}


def test_csv_alone_gives_the_class(ss2_root: Path) -> None:
    _mask(ss2_root / "train" / "labels" / "aaa111_gt.npy", _binary())
    (ss2_root / "train" / "labels" / "binary_classes.csv").write_text("aaa111,liptinite\n")
    index = discover(ss2_root)
    assert index.labeled[0].binary_class == 3 and index.labeled[1].binary_class is None
    validate(index)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id,class\naaa111,pyrite\n", r"binary_classes\.csv:2: unknown class"),
        ("nobody,vitrinite\n", r"binary_classes\.csv:1: id 'nobody'"),
        ("aaa111,2\naaa111,3\n", r"binary_classes\.csv:2: .*twice"),
        ("aaa111,2,extra\n", r"binary_classes\.csv:1: expected 'id,class'"),
        ("aaa111,background\n", r"binary_classes\.csv:1: unknown class 'background'"),
        ("aaa111," + "x" * 200_000 + "\n", r"binary_classes\.csv:1: not a readable CSV line .*field limit"),
    ],
    ids=["unknown-class", "unknown-id", "duplicate", "extra-column", "background", "huge-field"],
)
def test_bad_binary_classes_csv(ss2_root: Path, text: str, expected: str) -> None:
    (ss2_root / "train" / "labels" / "binary_classes.csv").write_text(text)
    with pytest.raises(DataError, match=expected):
        discover(ss2_root)


def test_bad_folder_binary_class(ss2_root: Path) -> None:
    with pytest.raises(DataError, match="unknown class"):
        discover(ss2_root, binary_class=7)


# --------------------------------------------------------------------------- validate and manifest


def test_validate_catches_shape_mismatch(ss2_root: Path) -> None:
    _mask(ss2_root / "train" / "labels" / "bbb222_gt.npy", height=12, width=8)
    with pytest.raises(DataError, match=r"bbb222_gt\.npy: size 12x8 .* is 8x12"):
        validate(discover(ss2_root))


def test_validate_catches_binary_mask_without_class(ss2_root: Path) -> None:
    _mask(ss2_root / "train" / "labels" / "aaa111_gt.npy", _binary())
    with pytest.raises(DataError, match="aaa111_gt.npy"):
        validate(discover(ss2_root))


def test_to_dict_is_relative_and_json(ss2_root: Path) -> None:
    manifest = discover(ss2_root, binary_class=2).to_dict()
    assert json.loads(json.dumps(manifest)) == manifest
    assert manifest["layout"] == "ss2"
    assert manifest["labeled"][0] == {
        "id": "aaa111",
        "image": "train/labeled/aaa111.JPG",
        "mask": "train/labels/aaa111_gt.npy",
        "binary_class": 2,
    }
    assert manifest["test"] == ["test/fff666.JPG"]


def test_sample_helpers(tmp_path: Path) -> None:
    image = _image(tmp_path / "a.png")
    sample = Sample("a", image)
    assert sample.read_image().shape == (8, 12, 3)
    with pytest.raises(DataError, match="has no mask"):
        sample.read_mask()
    index = DatasetIndex(root=tmp_path, layout="images", labeled=[], unlabeled=[image], test=[])
    assert index.to_dict()["unlabeled"] == ["a.png"]


def test_a_dataset_root_given_as_image_folder_names_its_image_folders(tmp_path):
    (tmp_path / "test").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "test" / "a.png")
    (tmp_path / "labels").mkdir()
    with pytest.raises(DataError, match=r"no images found .* e\.g\. \S+/test$"):
        list_images(tmp_path)
