"""Dataset layouts used by the model zoo: ISBI 2012 membranes (synthetic copy + the real one) and CamVid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsss.datasets import open_dataset
from wsss.errors import DatasetError

from conftest import SHARED_DATA


def _make_isbi(root, n_train=30, n_test=3):
    for sub in ("train/images", "train/masks", "test/images"):
        (root / sub).mkdir(parents=True)
    for k in range(n_train):
        Image.fromarray(np.full((6, 8), k, np.uint8)).save(root / "train" / "images" / f"{k}.png")
        mask = np.full((6, 8), 255, np.uint8)
        mask[:, k % 8] = 0  # one membrane column
        Image.fromarray(mask).save(root / "train" / "masks" / f"{k}.png")
    for k in range(n_test):
        Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / "test" / "images" / f"{k}.png")
    return root


def test_isbi_layout_splits_and_classes(tmp_path):
    root = _make_isbi(tmp_path / "isbi")
    train = open_dataset(root, "train")
    assert train.layout == "isbi" and train.classes == ("cell", "membrane")
    assert train.ids == [str(k) for k in range(25)]  # numeric order: 0..24, not 0, 1, 10, 11...
    assert open_dataset(root, "val").ids == ["25", "26", "27", "28", "29"]
    assert len(open_dataset(root).ids) == 30  # trainval by default
    sample = open_dataset(root, "val").load("27")
    assert sample.image.shape == (6, 8, 3) and sample.image[0, 0, 0] == 27
    expected = np.zeros((6, 8), np.uint8)
    expected[:, 27 % 8] = 1  # raw 0 (membrane) -> 1, raw 255 (cell) -> 0
    assert np.array_equal(sample.gt, expected)
    assert sample.image_labels == (1,)
    test = open_dataset(root, "test")
    assert test.ids == ["0", "1", "2"] and not test.has_gt and test.load("1").gt is None
    with pytest.raises(DatasetError, match="train .ids 0-24"):
        open_dataset(root, "validation")


@pytest.mark.realdata
def test_real_isbi_membrane():
    root = SHARED_DATA / "isbi2012-membrane"
    if not (root / "train" / "masks").is_dir():
        pytest.skip("../shared/data/isbi2012-membrane not present")
    train, val = open_dataset(root, "train"), open_dataset(root, "val")
    assert len(train.ids) == 25 and len(val.ids) == 5 and not set(train.ids) & set(val.ids)
    sample = val.load(val.ids[0])
    assert sample.image.shape == (512, 512, 3) and sample.gt.shape == (512, 512)
    assert set(np.unique(sample.gt).tolist()) == {0, 1}
    assert 0.1 < sample.gt.mean() < 0.4  # membranes are the minority class


@pytest.mark.realdata
def test_real_camvid_layout():
    root = SHARED_DATA / "camvid"
    if not (root / "trainannot").is_dir():
        pytest.skip("../shared/data/camvid not present")
    sizes = {"train": 367, "val": 101, "test": 233}
    for split, n in sizes.items():
        ds = open_dataset(root, split)
        assert ds.layout == "camvid" and len(ds.ids) == n and ds.num_classes == 11
    sample = open_dataset(root, "test").load(open_dataset(root, "test").ids[0])
    assert sample.image.shape == (360, 480, 3) and sample.gt.shape == (360, 480)
    values = set(np.unique(sample.gt).tolist())
    assert values <= set(range(11)) | {255} and 255 in values  # 11 (void) read as ignore
