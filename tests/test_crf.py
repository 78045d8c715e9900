"""Dense CRF: inference on known scenes, unaries, the labels-present rule, the box prior, the refine stage."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from wsss.cli import main
from wsss.crf import crf_params, crf_refine, dense_crf, unary_from_mask
from wsss.io import read_csv, read_json, read_mask


def _two_region_image(rng, h=48, w=64):
    """Left half dark red, right half bright blue (noisy); GT 0 left, 1 right."""
    img = np.zeros((h, w, 3), np.float32)
    img[:, : w // 2] = (150, 30, 30)
    img[:, w // 2:] = (30, 60, 200)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    gt = np.zeros((h, w), np.uint8)
    gt[:, w // 2:] = 1
    return img, gt


def test_dense_crf_snaps_to_colour_edge(rng):
    img, gt = _two_region_image(rng)
    # unary: right class believed 0.65 over a region shifted by 6 pixels, plus noise
    h, w = gt.shape
    p1 = np.full((h, w), 0.35, np.float32)
    p1[:, w // 2 - 6:] = 0.65
    p1 = np.clip(p1 + rng.normal(0, 0.1, p1.shape), 0.05, 0.95).astype(np.float32)
    probs = np.stack([1 - p1, p1])
    before = (probs.argmax(0) == gt).mean()
    q = dense_crf(img, probs, iterations=10, **crf_params("psa"))
    assert q.shape == probs.shape
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    after = (q.argmax(0) == gt).mean()
    assert before < 0.87 and after > 0.99


def test_dense_crf_shape_errors(rng):
    img, _ = _two_region_image(rng)
    with pytest.raises(ValueError, match="do not match"):
        dense_crf(img, np.ones((2, 10, 10), np.float32))
    assert (dense_crf(img, np.ones((1,) + img.shape[:2])) == 1).all()


def test_unary_from_mask_exact_values():
    mask = np.array([[0, 3], [255, 7]], np.uint8)
    p = unary_from_mask(mask, [0, 3, 7], confidence=0.8)
    np.testing.assert_allclose(p[:, 0, 0], [0.8, 0.1, 0.1])
    np.testing.assert_allclose(p[:, 0, 1], [0.1, 0.8, 0.1])
    np.testing.assert_allclose(p[:, 1, 0], [1 / 3] * 3)
    np.testing.assert_allclose(p[:, 1, 1], [0.1, 0.1, 0.8])
    with pytest.raises(ValueError, match="confidence"):
        unary_from_mask(mask, [0, 3], confidence=1.0)


def test_crf_params_presets_and_overrides():
    assert crf_params("deeplab") == {"sxy_gaussian": 3.0, "compat_gaussian": 3.0, "sxy": 121.0, "srgb": 5.0,
                                     "compat": 4.0}
    assert crf_params("box") == {"sxy_gaussian": 3.0, "compat_gaussian": 3.0, "sxy": 121.0, "srgb": 5.0,
                                 "compat": 2.0}
    p = crf_params("psa", srgb=20, compat=None)
    assert p["srgb"] == 20.0 and p["sxy"] == 80.0 and p["compat"] == 10.0
    with pytest.raises(ValueError, match="preset"):
        crf_params("fancy")


def test_crf_refine_fills_ignore_and_keep_ignore(rng):
    img, gt = _two_region_image(rng)
    mask = gt.copy()
    mask[:, 26:38] = 255  # a doubtful band across the edge
    out = crf_refine(img, mask=mask, image_labels=(1,), confidence=0.8)
    assert (out == gt).mean() > 0.99
    kept = crf_refine(img, mask=mask, image_labels=(1,), keep_ignore=True)
    assert (kept[:, 26:38] == 255).all()
    np.testing.assert_array_equal(kept[mask != 255], gt[mask != 255])


def test_crf_refine_only_present_labels_from_scores(rng):
    img, gt = _two_region_image(rng)
    h, w = gt.shape
    # scores over 3 classes [0, 1, 5]; class 5 is not tagged: it must never appear even where it scores highest
    s = np.zeros((3, h, w), np.float32)
    s[0] = np.where(gt == 0, 0.5, 0.1)
    s[1] = np.where(gt == 1, 0.4, 0.1)
    s[2] = np.where(gt == 1, 0.5, 0.05)
    out = crf_refine(img, scores=s, class_ids=[0, 1, 5], image_labels=(1,))
    assert set(np.unique(out)) == {0, 1}
    assert (out == gt).mean() > 0.99
    # without tags every score channel takes part
    out = crf_refine(img, scores=s, class_ids=[0, 1, 5])
    assert 5 in np.unique(out)


def test_crf_refine_box_prior(rng):
    img, gt = _two_region_image(rng)
    img[10:30, 40:60] = (230, 220, 40)  # a yellow object in its box
    h, w = gt.shape
    mask = np.full((h, w), 1, np.uint8)  # the mask says class 1 everywhere
    boxes = np.array([[1, 40, 10, 60, 30]])
    out = crf_refine(img, mask=mask, image_labels=(1,), boxes=boxes, box_prior=True)
    inside = np.zeros((h, w), bool)
    inside[10:30, 40:60] = True
    assert (out[~inside] == 0).all()
    assert (out[inside] == 1).mean() > 0.95
    free = crf_refine(img, mask=mask, image_labels=(1,), boxes=boxes, box_prior=False)
    assert (free[~inside] == 1).mean() > 0.9
    # a tagged class without a box disables the box prior (it could be anywhere)
    partial = crf_refine(img, mask=mask, image_labels=(1, 2), boxes=boxes, box_prior=True)
    assert (partial[~inside] == 1).mean() > 0.9


def test_refine_cli_on_grabcut_and_errors(demo_root, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(main, ["seeds", "--method", "grabcut", "--dataset", str(demo_root), "--run", str(run),
                               "--iterations", "3", "--split", "train"])
    assert res.exit_code == 0, res.output
    seeds = run / "seeds" / "grabcut"
    res = runner.invoke(main, ["refine", "--crf", "--input", str(seeds), "--dataset", str(demo_root), "--run",
                               str(run), "--workers", "2", "--preset", "psa"])
    assert res.exit_code == 0, res.output
    info = read_json(run / "refined" / "crf" / "stage.json")
    assert info["inputs"]["dataset"]["split"] == "train"  # the input stage's split by default
    rows = read_csv(run / "refined" / "crf" / "manifest.csv")
    assert len(rows) == 9 and all(r["status"] == "ok" for r in rows)
    refined = read_mask(run / "refined" / "crf" / rows[0]["mask"])
    assert 255 not in np.unique(refined)
    seeds_q = read_json(seeds / "stage.json")["quality"]
    assert info["quality"]["miou"] > seeds_q["miou"] + 1  # crisp synthetic edges: the CRF helps
    # resumable: a second call writes nothing new
    res = runner.invoke(main, ["refine", "--crf", "--input", str(seeds), "--dataset", str(demo_root), "--run",
                               str(run), "--preset", "psa"])
    assert res.exit_code == 0 and "0 written, 9 resumed" in res.output
    # from hard masks with keep-ignore: 255 of the seeds stays
    res = runner.invoke(main, ["refine", "--crf", "--input", str(seeds), "--dataset", str(demo_root), "--run",
                               str(tmp_path / "run2"), "--unary", "masks", "--keep-ignore", "--preset", "deeplab",
                               "--srgb", "7"])
    assert res.exit_code == 0, res.output
    info = read_json(tmp_path / "run2" / "refined" / "crf" / "stage.json")
    assert info["config"]["srgb"] == 7.0 and info["config"]["preset"] == "deeplab"
    for r in rows[:3]:
        seed = read_mask(seeds / r["mask"])
        out = read_mask(tmp_path / "run2" / "refined" / "crf" / r["mask"])
        assert ((out == 255) == (seed == 255)).all()
    # errors: no refiner flag, missing input folder, scores asked from a stage without scores
    res = runner.invoke(main, ["refine", "--input", str(seeds), "--dataset", str(demo_root), "--run", str(run)])
    assert res.exit_code == 2 and "--crf" in res.output
    res = runner.invoke(main, ["refine", "--crf", "--input", str(tmp_path / "nope"), "--dataset", str(demo_root),
                               "--run", str(run)])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(main, ["seeds", "--method", "box", "--dataset", str(demo_root), "--run", str(run)])
    res = runner.invoke(main, ["refine", "--crf", "--input", str(run / "seeds" / "box"), "--dataset",
                               str(demo_root), "--run", str(tmp_path / "run3"), "--unary", "scores"])
    assert res.exit_code == 2 and "keeps no scores" in res.output
    res = runner.invoke(main, ["refine", "--crf", "--input", str(seeds), "--dataset", str(demo_root), "--run",
                               str(tmp_path / "run4"), "--confidence", "1.5"])
    assert res.exit_code == 2 and "confidence" in res.output


def test_crf_refine_relabel_ignore_keeps_labelled_pixels(rng):
    img, gt = _two_region_image(rng)
    mask = gt.copy()
    mask[:, 26:38] = 255
    mask[0:4, 0:4] = 1  # a wrong seed label that a full CRF would overturn
    full = crf_refine(img, mask=mask, image_labels=(1,), confidence=0.8, relabel="all")
    only = crf_refine(img, mask=mask, image_labels=(1,), confidence=0.8, relabel="ignore")
    assert (full[0:4, 0:4] == 0).all()
    assert (only[0:4, 0:4] == 1).all()
    np.testing.assert_array_equal(only[mask != 255], mask[mask != 255])
    np.testing.assert_array_equal(only[:, 26:38], gt[:, 26:38])
    with pytest.raises(ValueError, match="relabel"):
        crf_refine(img, mask=mask, relabel="some")


def test_crf_refine_per_box_smaller_box_on_top(rng):
    h, w = 60, 80
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (40, 140, 50)
    img[10:50, 10:70] = (200, 40, 40)  # class 1 object
    img[20:40, 30:50] = (40, 40, 220)  # class 2 object on top of it
    gt = np.zeros((h, w), np.uint8)
    gt[10:50, 10:70] = 1
    gt[20:40, 30:50] = 2
    boxes = np.array([[1, 10, 10, 70, 50], [2, 30, 20, 50, 40]])
    ids = np.array([0, 1, 2])
    scores = np.stack([(gt == k).astype(np.float32) * 0.5 + 0.25 for k in ids])  # 0.75 right, 0.25 wrong
    for per_box in (True, False):
        out = crf_refine(img, scores=scores, class_ids=ids, image_labels=(1, 2), boxes=boxes, per_box=per_box)
        assert (out == gt).mean() > 0.99
