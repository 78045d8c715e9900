import numpy as np
import pytest

from wsss.conventions import IGNORE
from wsss.seeds.threshold import foreground_mask, paint_boxes, threshold_seeds


def _scene(bright_object=True):
    img = np.full((40, 50, 3), 40 if bright_object else 200, np.uint8)
    img[10:30, 15:35] = 200 if bright_object else 40
    truth = np.zeros((40, 50), bool)
    truth[10:30, 15:35] = True
    return img, truth


@pytest.mark.parametrize("bright", [True, False])
def test_auto_polarity_finds_the_object_either_way(bright):
    img, truth = _scene(bright)
    fg, thr = foreground_mask(img, blur_sigma=0)
    assert np.array_equal(fg, truth)
    assert 40 <= thr < 200


def test_forced_polarity_and_fixed_threshold():
    img, truth = _scene(True)
    fg, thr = foreground_mask(img, threshold=100, polarity="dark", blur_sigma=0)
    assert thr == 100 and np.array_equal(fg, ~truth)


def test_single_tag_takes_the_tag_and_no_tag_is_background():
    img, truth = _scene()
    seeds = threshold_seeds(img, [7], blur_sigma=0)
    assert set(np.unique(seeds)) == {0, 7} and np.array_equal(seeds == 7, truth)
    assert not threshold_seeds(img, [], blur_sigma=0).any()


def test_several_tags_use_boxes_smallest_wins_and_unboxed_foreground_is_ignore():
    img = np.full((40, 60, 3), 30, np.uint8)
    img[5:35, 5:25] = 220   # object A, boxed as class 2
    img[5:35, 40:55] = 220  # object B, not boxed
    boxes = np.array([[2, 0, 0, 30, 40], [3, 10, 10, 20, 20]])  # class 3 box lies inside class 2 box
    seeds = threshold_seeds(img, [2, 3], boxes, blur_sigma=0)
    assert (seeds[10:20, 10:20] == 3).all()           # smaller box wins
    assert (seeds[25:35, 5:25] == 2).all()
    assert (seeds[5:35, 40:55] == IGNORE).all()       # foreground outside every box
    assert (seeds[:, 30:40] == 0).all()               # background stays background


def test_paint_boxes_orders_by_area():
    out = paint_boxes((10, 10), np.array([[1, 0, 0, 4, 4], [2, 0, 0, 10, 10]]))
    assert (out[:4, :4] == 1).all() and out[5, 5] == 2
    assert (paint_boxes((3, 3), np.zeros((0, 5), np.int64)) == IGNORE).all()
