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
