import numpy as np
import pytest

from wsss.datasets import make_demo_data, make_demo_scene, open_dataset
from wsss.errors import DatasetError, ImageError
from wsss.io import read_mask, write_mask, write_png


def test_demo_data_is_deterministic_and_consistent(tmp_path, demo_root):
    again = make_demo_data(tmp_path / "again", 12, size=(64, 80), seed=3)
    for name in ("JPEGImages/demo_0005.jpg", "SegmentationClass/demo_0005.png", "Annotations/demo_0005.xml"):
        assert (again / name).read_bytes() == (demo_root / name).read_bytes()
    ds = open_dataset(demo_root, "trainval")
    assert ds.layout == "voc" and ds.classes[0] == "background" and len(ds.ids) == 12
    assert len(open_dataset(demo_root, "train").ids) + len(open_dataset(demo_root, "val").ids) == 12
    for image_id in ds.ids:
        s = ds.load(image_id)
        assert s.image.shape == (64, 80, 3) and s.gt.shape == (64, 80)
        # tags from XML equal the classes present in the GT; every box lies on its own class's pixels
        assert set(s.image_labels) == set(np.unique(s.gt)) - {0}
        for cls, x0, y0, x1, y1 in s.boxes:
            assert (s.gt[y0:y1, x0:x1] == cls).any()
            assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 64


def test_demo_boxes_are_tight_around_visible_instances():
    img, gt, boxes = make_demo_scene(np.random.default_rng(5), (96, 96), max_objects=1)
    (cls, x0, y0, x1, y1), = boxes
    ys, xs = np.nonzero(gt == cls)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_voc_xml_boxes_convert_to_zero_based_exclusive(demo_copy):
    (demo_copy / "Annotations" / "demo_0000.xml").write_text(
        "<annotation><object><name>disc</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax>"
        "</bndbox></object><object><name>ring</name><bndbox><xmin>70</xmin><ymin>50</ymin><xmax>300</xmax>"
        "<ymax>300</ymax></bndbox></object></annotation>")
    s = open_dataset(demo_copy).load("demo_0000")
    assert s.boxes.tolist() == [[1, 0, 1, 10, 20], [4, 69, 49, 80, 64]]  # second box clipped to 80x64
    assert s.image_labels == (1, 4)


def test_folder_layout(tmp_path):
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    img = np.zeros((20, 30, 3), np.uint8)
    write_png(root / "images" / "a.png", img)
    write_png(root / "images" / "b.png", img)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 2
    write_mask(root / "masks" / "a.png", mask)
    (root / "labels.csv").write_text("id,labels\na,dog\nb,cat dog\n")
    (root / "boxes.csv").write_text("id,class,x0,y0,x1,y1\na,dog,5,5,10,10\n")
    ds = open_dataset(root)
    assert ds.layout == "folder" and ds.ids == ["a", "b"]
    a, b = ds.load("a"), ds.load("b")
    assert a.image_labels == (2,) and a.boxes.tolist() == [[2, 5, 5, 10, 10]] and (a.gt == mask).all()
    assert b.image_labels == (1, 2) and b.gt is None and len(b.boxes) == 0


def test_dataset_errors_name_the_file_and_the_fix(tmp_path, demo_copy):
    with pytest.raises(DatasetError, match="not found; check --dataset"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"split file not found; available splits: train, trainval, val"):
        open_dataset(demo_copy, "test")
    (demo_copy / "ImageSets/Segmentation/empty.txt").write_text("\n")
    with pytest.raises(DatasetError, match="empty.txt: split file is empty"):
        open_dataset(demo_copy, "empty")
    (demo_copy / "ImageSets/Segmentation/dup.txt").write_text("demo_0001\ndemo_0001\n../evil\n")
    ds = open_dataset(demo_copy, "dup")
    assert ds.ids == ["demo_0001"]
    assert [p[0] for p in ds.problems] == ["demo_0001", "../evil"]
    assert "duplicate id" in ds.problems[0][1] and "not a plain file stem" in ds.problems[1][1]


def test_per_image_errors(demo_copy):
    ds = open_dataset(demo_copy)
    (demo_copy / "JPEGImages/demo_0001.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.raises(ImageError, match=r"demo_0001.jpg: cannot decode image .*corrupt or truncated"):
        ds.load("demo_0001")
    (demo_copy / "JPEGImages/demo_0002.jpg").unlink()
    with pytest.raises(ImageError, match="demo_0002.jpg: image file not found"):
        ds.load("demo_0002")
    write_mask(demo_copy / "SegmentationClass/demo_0003.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ImageError, match=r"demo_0003.png: mask is 10x10 but the image is 80x64"):
        ds.load("demo_0003")
    xml = demo_copy / "Annotations/demo_0004.xml"
    xml.write_text(xml.read_text().replace("<name>", "<name>zebra", 1))
    with pytest.raises(ImageError, match=r"demo_0004.xml: unknown class name 'zebra\w+'"):
        ds.load("demo_0004")


def test_read_mask_rejects_values_outside_the_classes(tmp_path):
    m = np.zeros((4, 4), np.uint8)
    m[0, 0] = 9
    write_mask(tmp_path / "m.png", m)
    with pytest.raises(ImageError, match=r"m.png: mask values \[9\] are outside 0..5 and 255"):
        read_mask(tmp_path / "m.png", 6)
    assert read_mask(tmp_path / "m.png", 6, ignore_values=(9,))[0, 0] == 255


def test_split_expressions_slice_and_subtract_split_files(demo_copy):
    from wsss.datasets import open_dataset
    from wsss.errors import DatasetError

    train = open_dataset(demo_copy, "train").ids
    every_other = open_dataset(demo_copy, "train[::2]")
    assert every_other.ids == train[::2] and every_other.split == "train[::2]"
    rest = open_dataset(demo_copy, "train-train[::2]").ids
    assert rest == train[1::2] and not set(rest) & set(every_other.ids)
    assert open_dataset(demo_copy, "trainval-val").ids == train
    assert open_dataset(demo_copy, "train[-3:]").ids == train[-3:]
    assert open_dataset(demo_copy, "train[1:4]-train[::2]").ids == [train[1], train[3]]
    # a split file of that very name wins over the expression
    split_dir = demo_copy / "ImageSets" / "Segmentation"
    (split_dir / "a-b.txt").write_text(train[0] + "\n")
    assert open_dataset(demo_copy, "a-b").ids == [train[0]]
    with pytest.raises(DatasetError, match="not a split expression"):
        open_dataset(demo_copy, "train[::2")
    with pytest.raises(DatasetError, match="step of 0"):
        open_dataset(demo_copy, "train[::0]")
    with pytest.raises(DatasetError, match="selects no image id"):
        open_dataset(demo_copy, "train-trainval")
    with pytest.raises(DatasetError, match="nosuch.txt: split file not found"):
        open_dataset(demo_copy, "nosuch-val")
