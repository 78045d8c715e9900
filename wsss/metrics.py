"""Segmentation metrics from a confusion matrix summed over a whole set.

The confusion matrix ``cm`` has shape (K, K + 1): row = GT class, column = predicted class, and the last column
counts pixels predicted 255 ("no label"). GT pixels that are 255 are ignored.

* headline IoU of class c = TP / (GT_c + P_c − TP): an abstained pixel is a miss for its GT class, so abstaining
  never raises the score;
* labelled IoU: the same over pixels the prediction labels (abstained pixels dropped);
* coverage: share of valid GT pixels that the prediction labels.

Means are taken over the classes that occur in the GT or the prediction (a class absent from both has no IoU).
"""

from __future__ import annotations

import numpy as np

from .conventions import IGNORE


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K + 1) int64 confusion of one image; ``pred`` 255 goes to the last column, ``gt`` 255 is skipped."""
    if gt.shape != pred.shape:
        raise ValueError(f"GT {gt.shape} and prediction {pred.shape} differ in size")
    valid = gt != IGNORE
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    p = np.where(p == IGNORE, num_classes, p)
    if g.size and (g.max() >= num_classes or p.max() > num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1} and 255")
    return np.bincount(g * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1)).reshape(
        num_classes, num_classes + 1
    )


def scores_from_confusion(cm: np.ndarray, class_names=None) -> dict:
    """Headline mIoU, labelled mIoU, coverage, pixel accuracy (percent) and a per-class table from ``cm``."""
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    tp = np.diag(cm[:, :k])
    gt_total = cm.sum(axis=1)  # includes abstained pixels
    pred_total = cm[:, :k].sum(axis=0)
    labelled_gt = cm[:, :k].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (gt_total + pred_total - tp)
        iou_labelled = tp / (labelled_gt + pred_total - tp)
        precision = tp / pred_total
        recall = tp / gt_total
    present = (gt_total + pred_total) > 0
    present_labelled = (labelled_gt + pred_total) > 0
    total = cm.sum()
    labelled = cm[:, :k].sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    per_class = {
        names[c]: {
            "iou": _pct(iou[c]), "labelled_iou": _pct(iou_labelled[c]), "precision": _pct(precision[c]),
            "recall": _pct(recall[c]), "gt_pixels": int(gt_total[c]), "pred_pixels": int(pred_total[c]),
        }
        for c in range(k)
        if present[c]
    }
    return {
        "miou": _pct(np.mean(iou[present])) if present.any() else None,
        "labelled_miou": _pct(np.mean(iou_labelled[present_labelled])) if present_labelled.any() else None,
        "coverage": _pct(labelled / total) if total else None,
        "pixel_accuracy": _pct(tp.sum() / total) if total else None,
        "ignore_percent": _pct(1 - labelled / total) if total else None,
        "mean_precision": _pct(np.nanmean(precision[present])) if present.any() else None,
        "mean_recall": _pct(np.nanmean(recall[present])) if present.any() else None,
        "pixels": int(total),
        "per_class": per_class,
    }


def _pct(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(100.0 * x, 3)
