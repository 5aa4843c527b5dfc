import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import jaccard_score

from ssl_seg import CLASS_NAMES, NUM_CLASSES
from ssl_seg.data.io import DataError
from ssl_seg.evaluate import evaluate_dirs, format_report


def write_pair(pred_dir, labels_dir, image_id, truth, pred, label_form="_gt.npy"):
    pred_dir.mkdir(exist_ok=True)
    labels_dir.mkdir(exist_ok=True)
    np.save(pred_dir / f"{image_id}_pred.npy", pred)
    if label_form.endswith(".npy"):
        np.save(labels_dir / f"{image_id}{label_form}", truth)
    else:
        Image.fromarray(truth).save(labels_dir / f"{image_id}{label_form}")


def random_pair(rng, shape):
    truth = rng.choice(NUM_CLASSES, size=shape, p=[0.55, 0.15, 0.2, 0.1]).astype(np.uint8)
    pred = np.where(rng.random(shape) < 0.7, truth, rng.integers(0, NUM_CLASSES, size=shape)).astype(np.uint8)
    return truth, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_on_concatenated_pixels(tmp_path, seed):
    rng = np.random.default_rng(seed)
    pred_dir, labels_dir = tmp_path / "preds", tmp_path / "labels"
    forms = ["_gt.npy", ".npy", ".png", ".bmp", ".tif"]
    truths, preds = [], []
    for index, form in enumerate(forms):
        truth, pred = random_pair(rng, (int(rng.integers(20, 60)), int(rng.integers(20, 60))))
        write_pair(pred_dir, labels_dir, f"img{index}", truth, pred, form)
        truths.append(truth.ravel())
        preds.append(pred.ravel())
    all_truth, all_pred = np.concatenate(truths), np.concatenate(preds)

    result = evaluate_dirs(pred_dir, labels_dir)

    assert result["num_images"] == len(forms)
    assert result["micro_jaccard_all"] == pytest.approx(
        jaccard_score(all_truth, all_pred, labels=[0, 1, 2, 3], average="micro")
    )
    assert result["micro_jaccard_macerals"] == pytest.approx(
        jaccard_score(all_truth, all_pred, labels=[1, 2, 3], average="micro")
    )
    assert sum(map(sum, result["confusion_matrix"])) == all_truth.size
    # Per-image scores are each image's own micro Jaccard.
    for index in range(len(forms)):
        expected = jaccard_score(truths[index], preds[index], labels=[1, 2, 3], average="micro")
        assert result["per_image"][f"img{index}"]["micro_jaccard_macerals"] == pytest.approx(expected)


def test_binary_labels_by_argument_and_csv(tmp_path):
    pred_dir, labels_dir = tmp_path / "preds", tmp_path / "labels"
    binary = np.zeros((10, 12), np.uint8)
    binary[2:6, 3:9] = 255
    binary[2, 3] = 128  # anti-aliased edge
    pred = np.zeros((10, 12), np.uint8)
    pred[2:6, 3:9] = 3
    write_pair(pred_dir, labels_dir, "lip", binary, pred)
    pred_inertinite = np.where(pred == 3, 1, 0).astype(np.uint8)
    write_pair(pred_dir, labels_dir, "ine", binary, pred_inertinite)

    with pytest.raises(DataError, match="binary"):
        evaluate_dirs(pred_dir, labels_dir)

    (labels_dir / "binary_classes.csv").write_text("id,class\nine,inertinite\n")
    # Folder-wide class for the rest, csv wins for 'ine': both images are then perfect.
    result = evaluate_dirs(pred_dir, labels_dir, binary_class=3)
    assert result["micro_jaccard_macerals"] == pytest.approx(1.0)
    assert result["iou/inertinite"] == pytest.approx(1.0)
    assert result["iou/liptinite"] == pytest.approx(1.0)


def test_ignore_pixels_in_labels_are_skipped(tmp_path):
    rng = np.random.default_rng(5)
    truth, pred = random_pair(rng, (30, 30))
    truth[:10] = 255
    write_pair(tmp_path / "p", tmp_path / "l", "a", truth, pred)
    result = evaluate_dirs(tmp_path / "p", tmp_path / "l")
    keep = truth != 255
    assert sum(map(sum, result["confusion_matrix"])) == keep.sum()
    assert result["micro_jaccard_all"] == pytest.approx(jaccard_score(truth[keep], pred[keep], average="micro"))


def test_empty_prediction_folder_refused(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "l").mkdir()
    with pytest.raises(DataError, match="_pred.npy"):
        evaluate_dirs(tmp_path / "p", tmp_path / "l")


def test_missing_folder_refused(tmp_path):
    with pytest.raises(DataError, match="not found"):
        evaluate_dirs(tmp_path / "nope", tmp_path)


def test_prediction_without_label_refused(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(7):
        write_pair(tmp_path / "p", tmp_path / "l", f"id{index}", *random_pair(rng, (8, 8)))
    for index in range(1, 7):
        (tmp_path / "l" / f"id{index}_gt.npy").unlink()
    with pytest.raises(DataError, match=r"no label for 6 prediction\(s\): id1, id2, id3, id4, id5 and 1 more"):
        evaluate_dirs(tmp_path / "p", tmp_path / "l")


def test_label_without_prediction_refused(tmp_path):
    rng = np.random.default_rng(0)
    write_pair(tmp_path / "p", tmp_path / "l", "a", *random_pair(rng, (8, 8)))
    np.save(tmp_path / "l" / "b_gt.npy", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"no prediction for 1 label\(s\): b"):
        evaluate_dirs(tmp_path / "p", tmp_path / "l")


def test_shape_mismatch_names_both_files(tmp_path):
    write_pair(tmp_path / "p", tmp_path / "l", "a", np.zeros((8, 9), np.uint8), np.zeros((9, 8), np.uint8))
    with pytest.raises(DataError, match=r"a_pred\.npy.*a_gt\.npy"):
        evaluate_dirs(tmp_path / "p", tmp_path / "l")


def test_two_labels_for_one_id_refused(tmp_path):
    rng = np.random.default_rng(0)
    truth, pred = random_pair(rng, (8, 8))
    write_pair(tmp_path / "p", tmp_path / "l", "a", truth, pred)
    Image.fromarray(truth).save(tmp_path / "l" / "a.png")
    with pytest.raises(DataError, match="both belong to image id"):
        evaluate_dirs(tmp_path / "p", tmp_path / "l")


def test_a_dataset_root_as_labels_names_its_mask_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "root").mkdir()
    write_pair(tmp_path / "p", tmp_path / "root" / "masks", "a", *random_pair(rng, (8, 8)))
    with pytest.raises(DataError, match=r"no masks in this folder itself; fix: .* e\.g\. .*root/masks"):
        evaluate_dirs(tmp_path / "p", tmp_path / "root")


@pytest.mark.parametrize("label_form", [".npy", "_gt.npy"])
def test_an_id_ending_in_gt_finds_its_label(tmp_path, label_form):
    rng = np.random.default_rng(0)
    write_pair(tmp_path / "p", tmp_path / "l", "core_gt", *random_pair(rng, (8, 8)), label_form=label_form)
    write_pair(tmp_path / "p", tmp_path / "l", "plain", *random_pair(rng, (8, 8)))
    assert set(evaluate_dirs(tmp_path / "p", tmp_path / "l")["per_image"]) == {"core_gt", "plain"}


@pytest.mark.parametrize(
    "bad_pred,message",
    [
        (np.full((8, 8), 4, np.uint8), "outside the class codes"),
        (np.zeros((8, 8), np.float32), "not an integer"),
        (np.zeros((2, 8, 8), np.uint8), "2-D"),
    ],
)
def test_bad_prediction_refused_naming_file(tmp_path, bad_pred, message):
    write_pair(tmp_path / "p", tmp_path / "l", "bad", np.zeros((8, 8), np.uint8), bad_pred)
    with pytest.raises(DataError, match=message) as info:
        evaluate_dirs(tmp_path / "p", tmp_path / "l")
    assert "bad_pred.npy" in str(info.value)
    assert "\n" not in str(info.value)


def test_format_report_mentions_scores_and_classes(tmp_path):
    rng = np.random.default_rng(3)
    for index in range(3):
        write_pair(tmp_path / "p", tmp_path / "l", f"x{index}", *random_pair(rng, (16, 16)))
    result = evaluate_dirs(tmp_path / "p", tmp_path / "l")
    text = format_report(result)
    assert f"{result['micro_jaccard_macerals']:.4f}" in text
    assert f"{result['micro_jaccard_all']:.4f}" in text
    for name in CLASS_NAMES:
        assert f"{result[f'iou/{name}']:.4f}" in text
        assert name in text
    assert str(result["confusion_matrix"][1][2]) in text
    assert "x0" in text


def test_lowest_list_leaves_out_images_without_macerals(tmp_path):
    empty = np.zeros((8, 8), np.uint8)  # no maceral in truth or prediction: scores 0 with nothing wrong
    wrong = np.zeros((8, 8), np.uint8)
    wrong[:4] = 2
    write_pair(tmp_path / "p", tmp_path / "l", "empty", empty, empty)
    write_pair(tmp_path / "p", tmp_path / "l", "wrong", wrong, np.where(wrong == 2, 1, 0).astype(np.uint8))
    result = evaluate_dirs(tmp_path / "p", tmp_path / "l")
    assert result["per_image"]["empty"]["maceral_pixels"] == 0
    lowest = format_report(result).split("lowest micro Jaccard")[1]
    assert "wrong" in lowest and "empty" not in lowest


def test_real_binary_example_scores_itself_perfectly(real_data, tmp_path):
    """The published SS2 example is a 0/255 liptinite mask: read with its class, it scores 1.0 against itself."""
    from ssl_seg.data.io import read_mask

    labels = real_data / "ss2_example" / "labels"
    truth = read_mask(labels / "vyqade_gt.npy", binary_class=3)
    (tmp_path / "p").mkdir()
    np.save(tmp_path / "p" / "vyqade_pred.npy", truth)
    with pytest.raises(DataError, match="binary"):
        evaluate_dirs(tmp_path / "p", labels)
    result = evaluate_dirs(tmp_path / "p", labels, binary_class=3)
    assert result["micro_jaccard_macerals"] == 1.0 and result["num_images"] == 1
    assert result["iou/liptinite"] == 1.0


def test_binary_classes_csv_with_unknown_id_refused(tmp_path):
    binary = np.zeros((6, 6), np.uint8)
    binary[1:3, 1:3] = 255
    write_pair(tmp_path / "p", tmp_path / "l", "a", binary, np.zeros((6, 6), np.uint8))
    (tmp_path / "l" / "binary_classes.csv").write_text("id,class\nnot_there,vitrinite\n")
    with pytest.raises(DataError, match="binary_classes.csv:2"):
        evaluate_dirs(tmp_path / "p", tmp_path / "l")


def test_cli_json_naming_a_folder_is_refused_before_scoring(tmp_path, capsys):
    from ssl_seg.cli import main

    write_pair(tmp_path / "p", tmp_path / "l", "x0", *random_pair(np.random.default_rng(0), (16, 16)))
    code = main(["evaluate", "--pred", str(tmp_path / "p"), "--labels", str(tmp_path / "l"), "--json", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2 and "is a folder" in captured.err and "micro Jaccard" not in captured.out


def test_output_piped_into_a_closed_reader_is_no_error(tmp_path):
    import subprocess
    import sys

    write_pair(tmp_path / "p", tmp_path / "l", "x0", *random_pair(np.random.default_rng(0), (16, 16)))
    process = subprocess.Popen([sys.executable, "-m", "ssl_seg", "evaluate", "--pred", str(tmp_path / "p"),
                                "--labels", str(tmp_path / "l")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # as `| head -0` does, before the table is printed
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and stderr == "", stderr
