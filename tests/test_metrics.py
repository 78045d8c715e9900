import numpy as np
import pytest

from wsss.metrics import confusion_matrix, scores_from_confusion


def test_confusion_counts_abstained_pixels_in_last_column():
    gt = np.array([[0, 0, 1, 1], [255, 1, 1, 0]], np.uint8)
    pred = np.array([[0, 255, 1, 0], [1, 1, 255, 0]], np.uint8)
    cm = confusion_matrix(gt, pred, 2)
    # rows: GT 0 (3 px), GT 1 (4 px); GT 255 is skipped
    assert cm.tolist() == [[2, 0, 1], [1, 2, 1]]


def test_headline_iou_counts_abstention_as_miss_and_labelled_iou_does_not():
    cm = np.array([[2, 0, 1], [1, 2, 1]])
    s = scores_from_confusion(cm, ["bg", "fg"])
    # bg: TP 2, GT 3, pred 3 -> 2 / 4 ; fg: TP 2, GT 4, pred 2 -> 2 / 4
    assert s["per_class"]["bg"]["iou"] == pytest.approx(50.0)
    assert s["per_class"]["fg"]["iou"] == pytest.approx(50.0)
    assert s["miou"] == pytest.approx(50.0)
    # labelled: bg TP 2, labelled GT 2, pred 3 -> 2/3 ; fg TP 2, labelled GT 3, pred 2 -> 2/3
    assert s["labelled_miou"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert s["coverage"] == pytest.approx(100 * 5 / 7, abs=1e-3)
    assert s["per_class"]["fg"]["precision"] == pytest.approx(100.0)
    assert s["per_class"]["fg"]["recall"] == pytest.approx(50.0)


def test_abstaining_on_a_correct_pixel_always_lowers_the_headline_score():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 3, (40, 40)).astype(np.uint8)
    pred = gt.copy()
    flip = rng.random((40, 40)) < 0.3
    pred[flip] = (gt[flip] + 1) % 3
    full = scores_from_confusion(confusion_matrix(gt, pred, 3))
    assert full["miou"] == full["labelled_miou"] and full["coverage"] == 100.0
    abstained = pred.copy()
    abstained[(pred == gt) & (rng.random((40, 40)) < 0.5)] = 255
    part = scores_from_confusion(confusion_matrix(gt, abstained, 3))
    assert part["miou"] < full["miou"]
    assert part["coverage"] < 100.0


def test_classes_absent_from_gt_and_prediction_are_left_out_of_the_mean():
    gt = np.zeros((4, 4), np.uint8)
    gt[:2] = 2
    s = scores_from_confusion(confusion_matrix(gt, gt.copy(), 5))
    assert s["miou"] == 100.0 and set(s["per_class"]) == {"0", "2"}


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 2)
