"""Box-constrained self-training: the rule on tiny arrays, and ``wsss label --guide selftrain`` on the demo set."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from wsss.cli import main
from wsss.datasets import open_dataset
from wsss.io import read_csv, read_json, read_mask
from wsss.label.selftrain import box_constrained_labels

B = 255


def test_background_outside_every_box_and_the_boxes_class_inside():
    pred = np.array([[1, 1, 0, 2, 2, 2],
                     [1, 1, 1, 2, 2, 2],
                     [0, 1, 1, 2, 2, 2],
                     [0, 0, 0, 0, 3, 3]])
    boxes = np.array([[1, 0, 0, 3, 3],      # class 1: columns 0-2, rows 0-2
                      [2, 3, 0, 5, 2]])     # class 2: columns 3-4, rows 0-1
    out = box_constrained_labels(pred, boxes)
    expected = np.array([[1, 1, 0, 2, 2, 0],
                         [1, 1, 1, 2, 2, 0],
                         [0, 1, 1, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0]], np.uint8)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)


def test_a_class_without_its_box_there_is_unsure():
    pred = np.array([[1, 2, 2],
                     [1, 2, 0]])
    boxes = np.array([[1, 0, 0, 3, 2]])     # one class-1 box over everything; the network also says class 2
    out = box_constrained_labels(pred, boxes)
    assert np.array_equal(out, [[1, B, B], [1, B, 0]])


def test_overlapping_boxes_keep_either_class():
    pred = np.array([[1, 2, 2, 0]])
    boxes = np.array([[1, 0, 0, 2, 1], [2, 1, 0, 4, 1]])  # pixel 1 is in both boxes
    assert np.array_equal(box_constrained_labels(pred, boxes), [[1, 2, 2, 0]])


def test_reference_disagreement_is_255_and_a_missed_box_takes_the_reference():
    pred = np.array([[1, 1, 0, 0],
                     [1, 0, 0, 0]])
    boxes = np.array([[1, 0, 0, 2, 2],      # found by the network
                      [3, 2, 0, 4, 2]])     # missed by the network: nothing of class 3 inside
    reference = np.array([[1, B, 3, 3],
                          [0, 1, B, 3]], np.uint8)
    out = box_constrained_labels(pred, boxes, reference=reference)
    # (0,0) agrees; (0,1) reference unsure: network's 1; (1,0) network 1 vs reference 0: 255; (1,1) 0 vs 1: 255;
    # the class-3 box takes the reference's class-3 pixels, its unsure pixel stays background (the network's)
    assert np.array_equal(out, [[1, 1, 3, 3], [B, B, 0, 3]])


def test_boxes_are_clipped_and_a_wrong_reference_shape_is_refused():
    pred = np.ones((2, 2), int)
    assert np.array_equal(box_constrained_labels(pred, np.array([[1, -5, -5, 1, 9]])), [[1, 0], [1, 0]])
    assert np.array_equal(box_constrained_labels(pred, np.zeros((0, 5))), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="reference"):
        box_constrained_labels(pred, np.zeros((0, 5)), reference=np.zeros((3, 3), np.uint8))


def test_cli_selftrain_on_the_demo_set(demo_root, tmp_path):
    """A network trained on box labels relabels the training images; the rule holds on every image: background
    outside every box, no class outside its boxes; without CRF, 255 exactly where the network and the reference
    disagree (checked against the network's own prediction)."""
    from wsss.models.inference import segment
    from wsss.stages.predict import load_trained_model

    runner = CliRunner()
    run = tmp_path / "run"
    common = ["--dataset", str(demo_root), "--split", "train", "--run", str(run)]
    assert runner.invoke(main, ["seeds", "--method", "box", *common]).exit_code == 0
    res = runner.invoke(main, ["train", "--model", "deeplabv2", "--labels", "seeds/box", *common, "--backbone",
                               "resnet18", "--iterations", "2", "--batch-size", "2", "--crop-size", "32",
                               "--loader-workers", "0"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["label", "--guide", "selftrain", "--checkpoint", str(run / "train/deeplabv2"),
                               "--reference", str(run / "seeds/box"), "--no-crf", "--no-predict-flip", *common])
    assert res.exit_code == 0, res.output
    folder = run / "labels/selftrain"
    info = read_json(folder / "stage.json")
    assert info["checkpoint_identity"].endswith(":2") and info["config"]["crf"] is False
    rows = read_csv(folder / "manifest.csv")
    ds = open_dataset(demo_root, "train")
    model, meta = load_trained_model(run / "train/deeplabv2/checkpoint.pt")
    assert len(rows) == len(ds.ids) and all(r["status"] == "ok" for r in rows)
    box_masks = {r["image_id"]: r["mask"] for r in read_csv(run / "seeds/box/manifest.csv")}
    for row in rows[:4]:
        sample = ds.load(row["image_id"])
        mask = read_mask(folder / row["mask"])
        reference = read_mask(run / "seeds/box" / box_masks[row["image_id"]])
        pred = segment(model, sample.image, scales=(1.0,), flip=False,
                       channels_last=bool(meta["speed"]["channels_last"])).argmax(0)
        assert np.array_equal(mask, box_constrained_labels(pred, sample.boxes, reference=reference))
        inside = np.zeros(mask.shape, bool)
        for _, x0, y0, x1, y1 in sample.boxes:
            inside[y0:y1, x0:x1] = True
        assert (mask[~inside] == 0).all()
    # with the CRF (the default) the 255 pixels are labelled
    res = runner.invoke(main, ["label", "--guide", "selftrain", "--checkpoint", str(run / "train/deeplabv2"),
                               "--reference", str(run / "seeds/box"), "--overwrite", *common])
    assert res.exit_code == 0, res.output
    for row in read_csv(folder / "manifest.csv"):
        assert 255 not in np.unique(read_mask(folder / row["mask"]))


def test_cli_selftrain_needs_a_checkpoint(demo_root, tmp_path):
    res = CliRunner().invoke(main, ["label", "--guide", "selftrain", "--dataset", str(demo_root), "--run",
                                    str(tmp_path)])
    assert res.exit_code == 2 and "needs --checkpoint" in res.output
