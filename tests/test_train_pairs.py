"""Issue 10: ``wsss train`` survives bad image/mask pairs like the per-image stages do.

Bad pairs are found before the first iteration (wsss.pairs.MaskPairs), left out with an error naming the file and the
fix, listed in the train folder's stage.json; training runs on the rest (the weights equal a run on a split that lists
only the good images) and the CLI exits 1 with a summary. No usable pair at all is exit 2. Resume stays exact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from wsss.cli import main
from wsss.datasets import open_dataset
from wsss.errors import DatasetError
from wsss.io import load_checkpoint

TRAIN = ["--model", "segnet_basic", "--iterations", "3", "--batch-size", "2", "--crop-size", "32",
         "--loader-workers", "0", "--device", "cpu", "--threads", "1"]

# image id -> substrings its error must hold (the file, the problem, the fix)
GT_CASES = {
    "demo_0000": ["JPEGImages/demo_0000.jpg", "cannot decode image", "re-export or remove it"],
    "demo_0001": ["JPEGImages/demo_0001.jpg", "truncated", "re-export or remove it"],
    "demo_0002": ["SegmentationClass/demo_0002.png", "mask is 40x30 but the image is 80x64", "re-export it or remove it"],
    "demo_0003": ["SegmentationClass/demo_0003.png", "mask values [77]", "relabel them or fix the class list"],
    "demo_0004": ["no GT mask for image 'demo_0004'", "add its mask file or remove it from split 'trainval'"],
    "demo_0005": ["JPEGImages/demo_0005.jpg", "image file not found", "add the image"],
}
GOOD = [f"demo_{k:04d}" for k in range(6, 12)]


def _train(dataset: Path, run: Path, *extra: str, split: str = "trainval", labels: str = "gt"):
    return CliRunner().invoke(main, ["train", "--labels", labels, "--dataset", str(dataset), "--split", split,
                                     "--run", str(run), *TRAIN, *extra])


def _damage_gt(root: Path) -> None:
    jpg, gt = root / "JPEGImages", root / "SegmentationClass"
    (jpg / "demo_0000.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    data = (jpg / "demo_0001.jpg").read_bytes()
    (jpg / "demo_0001.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((30, 40), np.uint8), "L").save(gt / "demo_0002.png")
    with Image.open(gt / "demo_0003.png") as im:
        bad = np.asarray(im).copy()
    bad[:2, :2] = 77
    Image.fromarray(bad, "L").save(gt / "demo_0003.png")
    (gt / "demo_0004.png").unlink()
    (jpg / "demo_0005.jpg").unlink()
    split = root / "ImageSets" / "Segmentation" / "trainval.txt"
    split.write_text(split.read_text() + "demo_0007\n../evil\n")  # a duplicate and an unsafe id


def _weights(run: Path) -> dict:
    return load_checkpoint(run / "train" / "segnet_basic" / "checkpoint.pt")["model"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture
def damaged(demo_copy) -> Path:
    _damage_gt(demo_copy)
    return demo_copy


def test_bad_pairs_are_left_out_listed_and_training_runs_on_the_rest(damaged, demo_root, tmp_path):
    result = _train(damaged, tmp_path / "run")
    assert result.exit_code == 1, result.output
    n_failed = len(GT_CASES) + 2  # + the duplicate line and the unsafe id
    assert f"{n_failed} training pair(s) left out (all listed in" in result.stderr
    stage = tmp_path / "run" / "train" / "segnet_basic"
    info = json.loads((stage / "stage.json").read_text())
    assert info["status"] == "complete_with_failures"
    assert info["counts"] == {"images": len(GOOD) + n_failed, "ok": len(GOOD), "failed": n_failed}
    assert info["training"]["train_images"] == len(GOOD) and info["training"]["iterations_done"] == 3
    reasons = {f["image_id"]: f["reason"] for f in info["failures"]}
    assert set(reasons) == set(GT_CASES) | {"demo_0007", "../evil"}
    for image_id, needles in GT_CASES.items():
        for needle in needles:
            assert needle in reasons[image_id], (needle, reasons[image_id])
        assert f"  {image_id}: " in result.stderr  # named in the summary too
    assert "duplicate id 'demo_0007'" in reasons["demo_0007"] and "not a plain file stem" in reasons["../evil"]
    # the rest trained exactly as a run on a split listing only the good images
    clean = tmp_path / "clean"
    shutil.copytree(demo_root, clean)
    (clean / "ImageSets" / "Segmentation" / "good.txt").write_text("".join(f"{i}\n" for i in GOOD))
    ref = _train(clean, tmp_path / "ref", split="good")
    assert ref.exit_code == 0, ref.output
    assert json.loads((tmp_path / "ref" / "train" / "segnet_basic" / "stage.json").read_text())["status"] == \
        "complete"
    _assert_same_weights(_weights(tmp_path / "run"), _weights(tmp_path / "ref"))


def test_resume_with_bad_pairs_is_exact_and_does_not_recheck_unchanged_pairs(damaged, tmp_path, monkeypatch):
    from wsss.pairs import CHECK_CACHE, MaskPairs

    checked = []
    real = MaskPairs.check_pair
    monkeypatch.setattr(MaskPairs, "check_pair", lambda self, i: checked.append(i) or real(self, i))
    first = _train(damaged, tmp_path / "run", "--stop-at", "1")
    assert first.exit_code == 1 and "left out" in first.stderr
    stage = tmp_path / "run" / "train" / "segnet_basic"
    assert json.loads((stage / "stage.json").read_text())["status"] == "stopped"
    n_with_mask = 12 - 1  # demo_0004 has no mask: reported without loading anything
    assert len(checked) == n_with_mask
    cache = json.loads((stage / CHECK_CACHE).read_text())
    assert sum(1 for _, why in cache["pairs"].values() if why) == len(GT_CASES) - 1
    checked.clear()
    touched = damaged / "JPEGImages" / "demo_0006.jpg"
    mtime = touched.stat().st_mtime_ns + 10**9
    os.utime(touched, ns=(mtime, mtime))
    resumed = _train(damaged, tmp_path / "run")
    assert resumed.exit_code == 1, resumed.output
    assert checked == ["demo_0006"]  # only the changed file is read again
    uninterrupted = _train(damaged, tmp_path / "ref")
    assert uninterrupted.exit_code == 1
    assert load_checkpoint(stage / "checkpoint.pt")["iteration"] == 3
    _assert_same_weights(_weights(tmp_path / "run"), _weights(tmp_path / "ref"))


def test_a_dataset_without_any_usable_pair_is_a_clear_error(demo_copy, tmp_path):
    gt = demo_copy / "SegmentationClass"
    for png in gt.iterdir():
        Image.fromarray(np.zeros((5, 5), np.uint8), "L").save(png)
    result = _train(demo_copy, tmp_path / "run", split="train")
    assert result.exit_code == 2, result.output
    assert "no usable training pair among the 9 image(s) of split 'train'" in result.stderr
    assert "SegmentationClass/demo_0000.png: mask is 5x5 but the image is 80x64" in result.stderr
    assert not (tmp_path / "run" / "train" / "segnet_basic" / "checkpoint.pt").exists()
    for png in gt.iterdir():
        png.unlink()
    with pytest.raises(DatasetError, match="no masks for any image"):
        from wsss.pairs import MaskPairs

        MaskPairs(open_dataset(demo_copy, "train"), None)


def test_bad_masks_in_a_labels_stage_folder_are_left_out(demo_root, demo_copy, tmp_path):
    """Training on a stage folder: a mask of another size, values outside the classes, a failed and a missing row,
    an unreadable mask and a truncated image are each named; the rest trains."""
    seeds = CliRunner().invoke(main, ["seeds", "--method", "threshold", "--dataset", str(demo_root), "--run",
                                      str(tmp_path / "up")])
    assert seeds.exit_code == 0, seeds.output
    stage = tmp_path / "labels"
    shutil.copytree(tmp_path / "up" / "seeds" / "threshold", stage)
    Image.fromarray(np.zeros((10, 12), np.uint8), "L").save(stage / "masks" / "demo_0001.png")
    with Image.open(stage / "masks" / "demo_0002.png") as im:
        bad = np.asarray(im).copy()
    bad[0, 0] = 40
    Image.fromarray(bad, "L").save(stage / "masks" / "demo_0002.png")
    (stage / "masks" / "demo_0003.png").write_bytes(b"not a png")
    manifest = (stage / "manifest.csv").read_text().splitlines()
    manifest = [ln for ln in manifest if not ln.startswith("demo_0004,")]
    manifest = [ln.replace("demo_0005,masks/demo_0005.png,,ok,", "demo_0005,,,failed,seed exploded")
                for ln in manifest]
    (stage / "manifest.csv").write_text("\n".join(manifest) + "\n")
    data = (demo_copy / "JPEGImages" / "demo_0006.jpg").read_bytes()
    (demo_copy / "JPEGImages" / "demo_0006.jpg").write_bytes(data[: len(data) // 3])
    expected = {
        "demo_0001": ["labels/masks/demo_0001.png", "is 12x10 but the image", "re-run that stage on this dataset"],
        "demo_0002": ["labels/masks/demo_0002.png", "mask values [40]", "relabel them"],
        "demo_0003": ["labels/masks/demo_0003.png", "cannot decode mask", "re-export it"],
        "demo_0004": [f"{stage}: no output for image 'demo_0004' (not in its manifest)", "re-run that stage"],
        "demo_0005": [f"{stage}: no output for image 'demo_0005' (failed there: seed exploded)", "re-run that stage"],
        "demo_0006": ["JPEGImages/demo_0006.jpg", "truncated", "re-export or remove it"],
    }
    result = _train(demo_copy, tmp_path / "run", labels=str(stage))
    assert result.exit_code == 1, result.output
    info = json.loads((tmp_path / "run" / "train" / "segnet_basic" / "stage.json").read_text())
    reasons = {f["image_id"]: f["reason"] for f in info["failures"]}
    assert set(reasons) == set(expected)
    for image_id, needles in expected.items():
        assert all(n in reasons[image_id] for n in needles), (image_id, reasons[image_id])
    assert info["training"]["train_images"] == 12 - len(expected)
    assert info["counts"]["ok"] == 12 - len(expected)


def test_the_check_cache_is_read_only_for_other_ranks(demo_root, tmp_path, monkeypatch):
    from wsss.pairs import MaskPairs

    ds, cache = open_dataset(demo_root, "train"), tmp_path / "pairs_checked.json"
    MaskPairs(ds, None, check_cache=cache, write_cache=False)
    assert not cache.exists()
    first = MaskPairs(ds, None, check_cache=cache)
    assert len(first) == 9 and len(json.loads(cache.read_text())["pairs"]) == 9
    calls = []
    monkeypatch.setattr(MaskPairs, "check_pair", lambda self, i: calls.append(i) or "")
    assert MaskPairs(ds, None, check_cache=cache, write_cache=False).ids == first.ids and calls == []
