"""Issue 2 must-show on real data: threshold seeds on voc-dev trainval (1000 images) and ``wsss eval`` against an
independent confusion-matrix computation written here from scratch (PIL + numpy, no wsss code)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import voc_dev
from wsss.cli import main


def _independent_scores(pairs, num_classes: int) -> dict:
    """mIoU (255 predicted = a miss for the GT class), labelled mIoU and coverage over all pixels of all pairs."""
    k = num_classes
    cm = np.zeros((k, k + 1), np.int64)  # rows GT class, columns predicted class, last column = predicted 255
    for gt_path, pred_path in pairs:
        gt = np.array(Image.open(gt_path)).astype(np.int64).ravel()
        pred = np.array(Image.open(pred_path)).astype(np.int64).ravel()
        keep = gt != 255
        gt, pred = gt[keep], pred[keep]
        pred[pred == 255] = k
        np.add.at(cm, (gt, pred), 1)
    tp = np.diag(cm[:, :k]).astype(float)
    gt_all = cm.sum(1)
    gt_labelled = cm[:, :k].sum(1)
    pred_all = cm[:, :k].sum(0)
    present = (gt_all + pred_all) > 0
    present_l = (gt_labelled + pred_all) > 0
    iou = tp[present] / (gt_all + pred_all - tp)[present]
    iou_l = tp[present_l] / (gt_labelled + pred_all - tp)[present_l]
    return {"miou": 100 * iou.mean(), "labelled_miou": 100 * iou_l.mean(),
            "coverage": 100 * cm[:, :k].sum() / cm.sum()}


@pytest.mark.realdata
@pytest.mark.slow
def test_threshold_seeds_on_voc_dev_trainval_and_eval_matches_an_independent_count(tmp_path):
    root = voc_dev()
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["seeds", "--method", "threshold", "--dataset", str(root), "--split",
                                       "trainval", "--run", str(run), "--workers", "2"])
    assert result.exit_code == 0, result.output
    stage = run / "seeds" / "threshold"
    ids = (root / "ImageSets/Segmentation/trainval.txt").read_text().split()
    assert len(ids) == 1000
    assert sorted(p.stem for p in (stage / "masks").iterdir()) == sorted(ids)
    with (stage / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image_id"] for r in rows] == ids and {r["status"] for r in rows} == {"ok"}
    info = json.loads((stage / "stage.json").read_text())
    assert info["counts"]["ok"] == 1000 and info["failures"] == [] and info["quality"]["images"] == 1000

    ev = CliRunner().invoke(main, ["eval", str(stage), "--dataset", str(root), "--split", "trainval", "--json"])
    assert ev.exit_code == 0, ev.output
    got = json.loads(ev.stdout)
    want = _independent_scores([(root / "SegmentationClass" / f"{i}.png", stage / "masks" / f"{i}.png")
                                for i in ids], 21)
    print("eval:", {k: got[k] for k in want}, "independent:", want)
    assert got["images"] == 1000
    for key in ("miou", "labelled_miou", "coverage"):
        assert got[key] == pytest.approx(want[key], abs=1e-3), key
    assert got["miou"] == pytest.approx(info["quality"]["miou"], abs=1e-3)  # the stage's own quality table
