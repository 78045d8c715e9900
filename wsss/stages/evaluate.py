"""``wsss eval``: score any mask folder against a dataset's GT (confusion matrix summed over the set)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..datasets import Dataset
from ..errors import StageError, WsssError
from ..metrics import confusion_matrix, scores_from_confusion
from ..folders import StageFolder


NO_GT = "no GT mask"  # not a failure: the image is left out and counted under "no_gt"


def _guarded(fn):
    """Run one image's scoring; any error becomes that image's reason (named file and fix for wsss errors), so one
    unreadable file never stops ``wsss eval`` with a traceback."""
    def run(args):
        image_id = args[2]
        try:
            return fn(args)
        except WsssError as exc:
            return image_id, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - one image's unexpected failure must not lose the others' scores
            return image_id, None, f"internal error {type(exc).__name__}: {exc}"
    return run


@_guarded
def _one(args):
    folder, dataset, image_id = args
    gt = dataset.load_gt(image_id)
    if gt is None:
        return image_id, None, NO_GT
    pred = folder.mask(image_id)
    if pred.shape != gt.shape:
        return image_id, None, (f"{folder.path / folder.rows[image_id]['mask']}: mask is "
                                f"{pred.shape[1]}x{pred.shape[0]} but the GT {dataset.gt_path(image_id)} is "
                                f"{gt.shape[1]}x{gt.shape[0]}; re-run the stage on this dataset")
    return image_id, confusion_matrix(gt, pred, dataset.num_classes), ""


def _split(results):
    """``(confusion matrices, [{image_id, reason}] of the images that could not be read, ids without GT)``."""
    cms = [cm for _, cm, _ in results if cm is not None]
    errors = [{"image_id": i, "reason": why} for i, cm, why in results if cm is None and why != NO_GT]
    no_gt = [i for i, cm, why in results if cm is None and why == NO_GT]
    return cms, errors, no_gt


def _first(errors, no_gt) -> str:
    if errors:
        return "; ".join(f"{e['image_id']}: {e['reason']}" for e in errors[:3])
    return f"none of the {len(no_gt)} images has a GT mask in the dataset"


def evaluate_folder(path: str | Path, dataset: Dataset, *, workers: int = 2) -> dict:
    """mIoU etc. of the masks in ``path`` (stage folder or folder of PNGs) over the dataset split's ids.

    Images of the split with no usable prediction are counted under ``missing``, those without GT under ``no_gt``;
    images whose prediction or GT cannot be read (or whose manifest row points outside the folder) are listed under
    ``errors`` with the file and the reason. All of them are left out of the scores.
    """
    folder = StageFolder.open(path)
    ids = [i for i in dataset.ids if folder.has(i)]
    missing = [i for i in dataset.ids if not folder.has(i)]
    if not ids:
        raise StageError(f"{path}: none of the {len(dataset.ids)} images of split {dataset.split!r} has a mask "
                         "here; check --dataset/--split")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(_one, [(folder, dataset, i) for i in ids]))
    cms, errors, no_gt = _split(results)
    errors += [{"image_id": i, "reason": folder.refused[i]} for i in dataset.ids if i in folder.refused]
    if not cms:
        raise StageError(f"{path}: no image could be scored against GT ({_first(errors, no_gt)})")
    out = scores_from_confusion(np.sum(cms, axis=0), dataset.classes)
    out.update({"images": len(cms), "missing": len(missing), "no_gt": len(no_gt), "errors": errors,
                "masks": str(path), "dataset": dataset.describe()})
    return out


# ------------------------------------------------------------------------------------ threshold sweep
@_guarded
def _sweep_one(args):
    from ..seeds.cam import sweep_confusions

    folder, dataset, image_id, thresholds = args
    gt = dataset.load_gt(image_id)
    if gt is None:
        return image_id, None, NO_GT
    scores, class_ids = folder.scores(image_id)
    if scores.shape[1:] != gt.shape:
        return image_id, None, f"scores {scores.shape[1:]} and GT {gt.shape} differ in size"
    return image_id, sweep_confusions(scores, class_ids, gt, thresholds, dataset.num_classes), ""


def sweep_folder(path: str | Path, dataset: Dataset, thresholds, *, workers: int = 2) -> dict:
    """mIoU of the dense label map of a scores folder (CAMs) at each background threshold, against GT.

    A pixel takes the class of its largest score when that score is above the threshold, else background
    (:func:`wsss.seeds.cam.cam_seed_mask` without ``fg_threshold``). Returns ``{"rows": [{bg_threshold, miou,
    labelled_miou, mean_precision, mean_recall}], "best": row, "images", "missing", "errors"}``.
    """
    thresholds = tuple(float(t) for t in thresholds)
    if not thresholds:
        raise StageError("no thresholds to sweep; give e.g. --sweep 0.05:0.6:0.05")
    folder = StageFolder.open(path)
    if not folder.has_scores:
        raise StageError(f"{path}: this folder keeps no scores/ (its manifest lists none); sweep a stage that "
                         "writes score maps, e.g. seeds/cam")
    ids = [i for i in dataset.ids if folder.has(i) and folder.rows[i].get("scores")]
    missing = [i for i in dataset.ids if i not in set(ids)]
    if not ids:
        raise StageError(f"{path}: none of the {len(dataset.ids)} images of split {dataset.split!r} has scores "
                         "here; check --dataset/--split")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(_sweep_one, [(folder, dataset, i, thresholds) for i in ids]))
    cms, errors, no_gt = _split(results)
    if not cms:
        raise StageError(f"{path}: no image could be scored against GT ({_first(errors, no_gt)})")
    total = np.sum(cms, axis=0)
    rows = []
    for t, cm in zip(thresholds, total):
        q = scores_from_confusion(cm, dataset.classes)
        rows.append({"bg_threshold": t, **{k: q[k] for k in ("miou", "labelled_miou", "mean_precision",
                                                             "mean_recall", "pixel_accuracy")}})
    best = max(rows, key=lambda r: -1.0 if r["miou"] is None else r["miou"])
    return {"rows": rows, "best": best, "images": len(cms), "missing": len(missing), "no_gt": len(no_gt),
            "errors": errors,
            "scores": str(path), "dataset": dataset.describe()}
