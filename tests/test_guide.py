"""Guide labeller: exact pseudo masks on hand-built scenes (seeds + saliency given)."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.label.guide import (dense_cam_labels, guide_labels, saliency_only_labels, scores_from_seed_mask,
                              select_classes, top_tag)


def scene():
    """A 20 x 30 scene: three salient regions A (one class), B (two classes), C (no seed); one confident and one
    weak seed outside the salient regions."""
    h, w = 20, 30
    sal = np.zeros((h, w), np.float32)
    sal[2:9, 2:11] = 0.9   # region A
    sal[2:9, 14:27] = 0.7  # region B
    sal[12:18, 2:9] = 0.6  # region C: no seed inside
    sal[0, :] = 0.3        # below the threshold: not salient
    cams = np.zeros((3, h, w), np.float32)  # classes 3, 5, 7
    cams[0, 4:7, 4:8] = 1.0           # class 3 seed inside A
    cams[0, 14:17, 20:24] = 0.9       # class 3 confident seed outside any salient region
    cams[1, 15:17, 12:14] = 0.5       # class 5: a weak seed outside (not confident)
    # class 5 strong on the left of B, class 7 on the right; a linear ramp so arg-max flips after column 20
    cols = np.arange(14, 27, dtype=np.float32)
    cams[1, 2:9, 14:27] = 1.0 - (cols - 14) / 12.0
    cams[2, 2:9, 14:27] = (cols - 14) / 12.0
    cams *= 2.0  # un-normalised on purpose: the labeller divides by each map's maximum
    return sal, cams, np.array([3, 5, 7])


def expected():
    h, w = 20, 30
    out = np.zeros((h, w), np.uint8)
    out[2:9, 2:11] = 3
    cols = np.arange(14, 27)
    left = cols <= 20  # column 20: both maps 0.5, the tie goes to the first class (5)
    out[2:9, 14:27] = np.where(left, 5, 7)[None, :]
    out[12:18, 2:9] = 255
    out[14:17, 20:24] = 3
    return out


def test_guide_exact_mask():
    sal, cams, ids = scene()
    mask = guide_labels(sal, cams, ids, image_labels=(3, 5, 7))
    np.testing.assert_array_equal(mask, expected())
    assert (mask == 255).sum() == 6 * 7


def test_guide_untagged_maps_are_dropped():
    sal, cams, ids = scene()
    mask = guide_labels(sal, cams, ids, image_labels=(3, 5))
    exp = expected()
    exp[2:9, 14:27] = 5  # class 7 is not a tag: B is all class 5
    np.testing.assert_array_equal(mask, exp)


def test_guide_min_seed_share_keeps_stray_seeds_from_splitting():
    sal, cams, ids = scene()
    cams[2] = 0
    cams[2, 2, 26] = 5.0  # one stray pixel of class 7 (its own maximum) in region B
    mask = guide_labels(sal, cams, ids, image_labels=(3, 5, 7))
    assert set(np.unique(mask[2:9, 14:27])) == {5}
    mask0 = guide_labels(sal, cams, ids, image_labels=(3, 5, 7), min_seed_share=0.0)
    assert mask0[2, 26] == 7


def test_guide_thresholds():
    sal, cams, ids = scene()
    # saliency threshold above B and C: they become background; A still class 3
    mask = guide_labels(sal, cams, ids, image_labels=(3, 5, 7), saliency_threshold=0.8)
    assert set(np.unique(mask[12:18, 2:9])) == {0}
    # B is no longer salient: only its confident ends (map >= 0.8) keep a class, the middle is background
    cols = np.arange(14, 27)
    ramp = (cols - 14) / 12.0
    exp_b = np.where(1 - ramp >= 0.8, 5, np.where(ramp >= 0.8, 7, 0))
    np.testing.assert_array_equal(mask[2:9, 14:27], np.broadcast_to(exp_b, (7, 13)))
    assert (mask[2:9, 2:11] == 3).all()
    # a confident threshold above 0.9 removes the lone class-3 seed outside the salient regions
    mask = guide_labels(sal, cams, ids, image_labels=(3, 5, 7), confident_threshold=0.95)
    assert (mask[14:17, 20:24] == 0).all()
    # the weak class-5 seed (0.5) is confident under a lower threshold
    mask = guide_labels(sal, cams, ids, image_labels=(3, 5, 7), confident_threshold=0.4)
    assert (mask[15:17, 12:14] == 5).all()


def test_guide_no_tags_and_no_maps():
    sal, cams, ids = scene()
    assert (guide_labels(sal, cams, ids, image_labels=()) == 0).all()
    empty = np.zeros((0, 20, 30), np.float32)
    mask = guide_labels(sal, empty, np.zeros(0, int), image_labels=(4,))
    np.testing.assert_array_equal(mask, np.where(sal >= 0.5, 255, 0))


def test_guide_bad_shapes():
    sal, cams, ids = scene()
    with pytest.raises(ValueError, match="differ in size"):
        guide_labels(sal[:10], cams, ids)
    with pytest.raises(ValueError, match="class ids"):
        guide_labels(sal, cams, ids[:2])


def test_mask_seeds_split_by_nearest_seed():
    # one salient bar with a class-1 seed at the left end and a class-2 seed at the right end
    sal = np.zeros((5, 21), np.float32)
    sal[1:4, :] = 1.0
    seeds = np.zeros((5, 21), np.uint8)
    seeds[2, 0] = 1
    seeds[2, 20] = 2
    seeds[0, 10] = 255
    maps, ids = scores_from_seed_mask(seeds)
    assert ids.tolist() == [1, 2]
    mask = guide_labels(sal, maps, ids, image_labels=(1, 2))
    exp = np.zeros((5, 21), np.uint8)
    exp[1:4, :10] = 1
    exp[1:4, 11:] = 2
    exp[1:4, 10] = 1  # equidistant column: the first class wins the tie
    exp[2, 0], exp[2, 20] = 1, 2
    np.testing.assert_array_equal(mask, exp)


def test_dense_cam_and_saliency_only():
    sal, cams, ids = scene()
    dense = dense_cam_labels(cams, ids, image_labels=(3, 5, 7), background_threshold=0.15)
    norm, _ = select_classes(cams, ids, (3, 5, 7))
    peak = norm.max(axis=0)
    assert (dense[peak <= 0.15] == 0).all()
    assert dense[5, 5] == 3 and dense[5, 15] == 5 and dense[5, 25] == 7 and dense[15, 21] == 3
    assert (dense != 255).all()  # dense: no unsure pixels
    # top tag: class 5 and 7 maps cover region B (mean 0.5 each), class 3 only small blocks
    tag = top_tag(cams, ids, (3, 5, 7))
    means = norm.reshape(3, -1).mean(axis=1)
    assert tag == ids[means.argmax()]
    only = saliency_only_labels(sal, cams, ids, image_labels=(3, 5, 7))
    np.testing.assert_array_equal(only, np.where(sal >= 0.5, tag, 0))
    assert top_tag(np.zeros((0, 4, 4)), [], (2,)) == 2
    assert top_tag(np.zeros((0, 4, 4)), [], (2, 3)) is None
    assert (saliency_only_labels(sal, np.zeros((0, 20, 30)), [], (2, 3))[sal >= 0.5] == 255).all()
    assert (saliency_only_labels(sal, cams, ids, ()) == 0).all()


# ------------------------------------------------------------------------------------------- stage + CLI
def _fake_stages(demo_root, tmp_path):
    """A CAM-like seed stage (maps peaking inside each GT object) and a saliency stage (blurred GT foreground)
    for the demo set, written as stage folders (manifest + masks + scores)."""
    import cv2

    from wsss.datasets import open_dataset
    from wsss.io import write_csv, write_mask, write_scores

    data = open_dataset(demo_root, "trainval")
    cam_dir, sal_dir = tmp_path / "seeds" / "cam", tmp_path / "seeds" / "saliency"
    cam_rows, sal_rows = [], []
    for image_id in data.ids:
        s = data.load(image_id, image=False)
        gt = s.gt
        maps = []
        for c in s.image_labels:
            inside = (gt == c).astype(np.uint8)
            maps.append(cv2.distanceTransform(inside, cv2.DIST_L2, 5))
        maps = np.stack(maps).astype(np.float32)
        write_scores(cam_dir / "scores" / f"{image_id}.npz", maps, s.image_labels)
        write_mask(cam_dir / "masks" / f"{image_id}.png", np.zeros(gt.shape, np.uint8))
        cam_rows.append([image_id, f"masks/{image_id}.png", f"scores/{image_id}.npz", "ok", "", 0])
        sal = cv2.GaussianBlur((gt > 0).astype(np.float32), (0, 0), 2.0)
        write_scores(sal_dir / "scores" / f"{image_id}.npz", sal[None], [255])
        write_mask(sal_dir / "masks" / f"{image_id}.png", np.zeros(gt.shape, np.uint8))
        sal_rows.append([image_id, f"masks/{image_id}.png", f"scores/{image_id}.npz", "ok", "", 0])
    header = ["image_id", "mask", "scores", "status", "error", "seconds"]
    write_csv(cam_dir / "manifest.csv", header, cam_rows)
    write_csv(sal_dir / "manifest.csv", header, sal_rows)
    return data, cam_dir, sal_dir


def test_label_cli_guides_match_the_functions(demo_root, tmp_path):
    from click.testing import CliRunner

    from wsss.cli import main
    from wsss.io import read_mask, read_scores

    data, cam_dir, sal_dir = _fake_stages(demo_root, tmp_path)
    runner = CliRunner()
    run = tmp_path / "run"
    quality = {}
    for guide in ("saliency", "cam", "saliency-only"):
        args = ["label", "--guide", guide, "--seeds", str(cam_dir), "--saliency", str(sal_dir), "--dataset",
                str(demo_root), "--run", str(run), "--workers", "2"]
        res = runner.invoke(main, args)
        assert res.exit_code == 0, res.output
        stage = run / "labels" / guide
        for image_id in data.ids[:4]:
            s = data.load(image_id, image=False)
            maps, ids = read_scores(cam_dir / "scores" / f"{image_id}.npz")
            sal = read_scores(sal_dir / "scores" / f"{image_id}.npz")[0][0]
            expect = {"saliency": lambda: guide_labels(sal, maps, ids, s.image_labels),
                      "cam": lambda: dense_cam_labels(maps, ids, s.image_labels),
                      "saliency-only": lambda: saliency_only_labels(sal, maps, ids, s.image_labels)}[guide]()
            np.testing.assert_array_equal(read_mask(stage / "masks" / f"{image_id}.png"), expect)
        import json

        quality[guide] = json.loads((stage / "stage.json").read_text())["quality"]["miou"]
        again = runner.invoke(main, args)
        assert again.exit_code == 0 and f"0 written, {len(data.ids)} resumed" in again.output, again.output
    # with CAMs that peak inside the objects and a saliency map of the true extent, the guide beats both baselines
    assert quality["saliency"] > quality["cam"] and quality["saliency"] > quality["saliency-only"]
    assert quality["saliency"] > 90


def test_label_cli_threshold_seeds_and_errors(demo_root, tmp_path):
    from click.testing import CliRunner

    from wsss.cli import main

    data, cam_dir, sal_dir = _fake_stages(demo_root, tmp_path)
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(main, ["seeds", "--method", "threshold", "--dataset", str(demo_root), "--run", str(run)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["label", "--guide", "saliency", "--seeds", str(run / "seeds" / "threshold"),
                               "--saliency", str(sal_dir), "--dataset", str(demo_root), "--run", str(run)])
    assert res.exit_code == 0, res.output  # mask-only seeds: nearest-seed evidence
    res = runner.invoke(main, ["label", "--guide", "saliency", "--seeds", str(cam_dir), "--dataset",
                               str(demo_root), "--run", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "needs --saliency" in res.output
    res = runner.invoke(main, ["label", "--guide", "saliency", "--seeds", str(run / "seeds" / "threshold"),
                               "--saliency", str(run / "seeds" / "threshold"), "--dataset", str(demo_root),
                               "--run", str(tmp_path / "r3")])
    assert res.exit_code == 2 and "keeps no scores" in res.output
    # a saliency folder passed as --seeds: every image fails with a message naming the fix; exit 1
    res = runner.invoke(main, ["label", "--guide", "cam", "--seeds", str(sal_dir), "--dataset", str(demo_root),
                               "--run", str(tmp_path / "r4")])
    assert res.exit_code == 1 and "pass it as --saliency" in res.output
    res = runner.invoke(main, ["label", "--guide", "cam", "--seeds", str(cam_dir), "--dataset", str(demo_root),
                               "--run", str(tmp_path / "r5"), "--seed-threshold", "0.3"])
    assert res.exit_code == 2 and "does not apply" in res.output


def test_guide_fill_single_tag():
    sal, cams, ids = scene()
    # one tag (3): region B has no class-3 seed and region C none at all -> 255 by default, 3 with the option
    only3 = guide_labels(sal, cams, ids, image_labels=(3,))
    assert (only3[12:18, 2:9] == 255).all() and (only3[2:9, 14:27] == 255).all()
    filled = guide_labels(sal, cams, ids, image_labels=(3,), fill_single_tag=True)
    exp = only3.copy()
    exp[exp == 255] = 3
    np.testing.assert_array_equal(filled, exp)
    # several tags: the option changes nothing
    np.testing.assert_array_equal(guide_labels(sal, cams, ids, image_labels=(3, 5, 7), fill_single_tag=True),
                                  expected())
    empty = np.zeros((0, 20, 30), np.float32)
    assert (guide_labels(sal, empty, np.zeros(0, int), image_labels=(4,), fill_single_tag=True)[sal >= 0.5] == 4).all()



def test_guide_unclaimed_tag_takes_its_dense_cam_pixels():
    """Rule 8: a tag that no rule gave a pixel (class 9: its map fires outside every salient region, below the
    confident threshold) takes the 0/255 pixels where its map is the arg-max and >= the threshold."""
    sal, cams, ids = scene()
    h, w = sal.shape
    nine = np.zeros((1, h, w), np.float32)
    nine[0, 11:19, 10:20] = 0.3   # normalised 0.5: a weak, non-salient object
    nine[0, 12:15, 13:16] = 0.6   # its maximum (normalised 1.0)
    nine[0, 18, 19] = 0.05        # normalised 0.083: below any threshold used here
    cams = np.concatenate([cams, nine])
    ids, tags = np.array([3, 5, 7, 9]), (3, 5, 7, 9)
    # default confident threshold 0.8: 9's maximum is confident, 9 is claimed and the rule changes nothing
    claimed = expected()
    claimed[12:15, 13:16] = 9
    np.testing.assert_array_equal(guide_labels(sal, cams, ids, tags), claimed)
    np.testing.assert_array_equal(guide_labels(sal, cams, ids, tags, unclaimed_threshold=0.4), claimed)
    # nothing confident: 9 gets no pixel without the rule
    plain = expected()
    plain[14:17, 20:24] = 0  # class 3's confident seed is no longer confident either
    np.testing.assert_array_equal(guide_labels(sal, cams, ids, tags, confident_threshold=1.01), plain)
    # with it: the block, except class 5's weak seed (a tie at 0.5 goes to 5, the first) and the weak pixel
    want = plain.copy()
    want[11:19, 10:20] = 9
    want[15:17, 12:14] = 0
    want[18, 19] = 0
    np.testing.assert_array_equal(
        guide_labels(sal, cams, ids, tags, confident_threshold=1.01, unclaimed_threshold=0.4), want)
    # above the block's 0.5: the maximum alone
    want = plain.copy()
    want[12:15, 13:16] = 9
    np.testing.assert_array_equal(
        guide_labels(sal, cams, ids, tags, confident_threshold=1.01, unclaimed_threshold=0.6), want)


def test_label_split_defaults_to_the_seeds_stage_split(demo_root, tmp_path):
    """Without --split the label stage labels the images its --seeds stage was made on (as refine does with its
    --input), not the layout's whole set: no image of another split is listed as failed."""
    from click.testing import CliRunner

    from wsss.cli import main
    from wsss.datasets import open_dataset
    from wsss.io import read_json

    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(main, ["seeds", "--method", "threshold", "--dataset", str(demo_root), "--split", "val",
                               "--run", str(run)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["label", "--guide", "cam", "--seeds", str(run / "seeds" / "threshold"),
                               "--dataset", str(demo_root), "--run", str(run)])
    assert res.exit_code == 0, res.output
    info = read_json(run / "labels" / "cam" / "stage.json")
    val_ids = open_dataset(demo_root, "val").ids
    assert info["inputs"]["dataset"]["split"] == "val" and info["failures"] == []
    assert sorted((run / "labels" / "cam" / "masks").iterdir()) == sorted(
        run / "labels" / "cam" / "masks" / f"{i}.png" for i in val_ids)
    assert len(val_ids) < len(open_dataset(demo_root, "trainval").ids)
