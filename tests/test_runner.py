import json

import numpy as np
import pytest

from wsss.config import ThresholdConfig
from wsss.conventions import IGNORE
from wsss.datasets import open_dataset
from wsss.errors import StageError
from wsss.io import read_csv, read_mask
from wsss.seeds.threshold import threshold_seeds
from wsss.stages.evaluate import evaluate_folder
from wsss.stages.runner import run_method_stage
from wsss.stages.seeds import SEED_METHODS


def _run(ds, run_dir, config=ThresholdConfig(), **kw):
    return run_method_stage("seeds", "threshold", SEED_METHODS["threshold"], config, ds, run_dir, **kw)


def test_stage_folder_contract(demo_root, tmp_path):
    ds = open_dataset(demo_root)
    summary = _run(ds, tmp_path / "run", overlays=2)
    stage = tmp_path / "run" / "seeds" / "threshold"
    assert summary.ok and summary.done == 12 and summary.skipped == 0
    rows = read_csv(stage / "manifest.csv")
    assert [r["image_id"] for r in rows] == ds.ids and {r["status"] for r in rows} == {"ok"}
    info = json.loads((stage / "stage.json").read_text())
    assert info["stage"] == "seeds" and info["method"] == "threshold" and info["status"] == "complete"
    assert info["config"] == {"threshold": None, "polarity": "auto", "blur_sigma": 1.0}
    assert info["counts"]["ok"] == 12 and info["failures"] == []
    assert sorted(p.name for p in (stage / "overlays").iterdir()) == ["demo_0000.jpg", "demo_0001.jpg"]
    assert not list(stage.rglob("*.tmp"))
    # masks are exactly what the pure function gives, as palette PNGs
    s = ds.load("demo_0007")
    expected = threshold_seeds(s.image, s.image_labels, s.boxes)
    assert np.array_equal(read_mask(stage / "masks" / "demo_0007.png"), expected)
    # stage quality equals a separate evaluation of the folder
    assert info["quality"]["miou"] == evaluate_folder(stage, ds)["miou"]


def test_eval_matches_an_independent_confusion_matrix(demo_root, tmp_path):
    ds = open_dataset(demo_root)
    _run(ds, tmp_path / "run")
    k = ds.num_classes
    inter, union = np.zeros(k), np.zeros(k)
    for image_id in ds.ids:
        gt = ds.load_gt(image_id)
        pred = read_mask(tmp_path / "run/seeds/threshold/masks" / f"{image_id}.png")
        valid = gt != IGNORE
        for c in range(k):
            g, p = (gt == c) & valid, (pred == c) & valid
            inter[c] += (g & p).sum()
            union[c] += (g | p).sum()  # a 255 prediction is in no p: a miss for its GT class
    present = union > 0
    expected = 100 * np.mean(inter[present] / union[present])
    assert evaluate_folder(tmp_path / "run/seeds/threshold", ds)["miou"] == pytest.approx(expected, abs=1e-3)


def test_resume_skips_finished_images_and_rewrites_only_missing(demo_root, tmp_path):
    ds = open_dataset(demo_root)
    _run(ds, tmp_path / "run")
    masks = tmp_path / "run/seeds/threshold/masks"
    before = {p.name: p.read_bytes() for p in masks.iterdir()}
    (masks / "demo_0003.png").unlink()
    summary = _run(ds, tmp_path / "run")
    assert summary.done == 1 and summary.skipped == 11
    assert {p.name: p.read_bytes() for p in masks.iterdir()} == before


def test_other_config_is_refused_unless_overwrite(demo_root, tmp_path):
    ds = open_dataset(demo_root)
    _run(ds, tmp_path / "run")
    with pytest.raises(StageError, match="made with another config.*--overwrite"):
        _run(ds, tmp_path / "run", ThresholdConfig(threshold=100.0))
    summary = _run(ds, tmp_path / "run", ThresholdConfig(threshold=100.0), overwrite=True)
    assert summary.done == 12
    info = json.loads((tmp_path / "run/seeds/threshold/stage.json").read_text())
    assert info["config"]["threshold"] == 100.0


def test_workers_give_identical_outputs(demo_root, tmp_path):
    ds = open_dataset(demo_root)
    _run(ds, tmp_path / "one", workers=1)
    _run(ds, tmp_path / "two", workers=2)
    for image_id in ds.ids:
        a = (tmp_path / "one/seeds/threshold/masks" / f"{image_id}.png").read_bytes()
        b = (tmp_path / "two/seeds/threshold/masks" / f"{image_id}.png").read_bytes()
        assert a == b


def test_bad_images_are_recorded_and_the_rest_is_processed(demo_copy, tmp_path):
    (demo_copy / "JPEGImages/demo_0002.jpg").write_bytes(b"not a jpeg")
    (demo_copy / "JPEGImages/demo_0005.jpg").unlink()
    ds = open_dataset(demo_copy)
    summary = _run(ds, tmp_path / "run")
    assert [i for i, _ in summary.failed] == ["demo_0002", "demo_0005"]
    rows = {r["image_id"]: r for r in read_csv(tmp_path / "run/seeds/threshold/manifest.csv")}
    assert rows["demo_0002"]["status"] == "failed" and "demo_0002.jpg: cannot decode" in rows["demo_0002"]["error"]
    assert rows["demo_0005"]["mask"] == "" and "image file not found" in rows["demo_0005"]["error"]
    masks = sorted(p.stem for p in (tmp_path / "run/seeds/threshold/masks").iterdir())
    assert masks == [i for i in ds.ids if i not in ("demo_0002", "demo_0005")]


def test_rank_sharding_merges_into_one_manifest(demo_root, tmp_path, monkeypatch):
    """Two torchrun-style ranks (threads with their own rank) shard the images; rank 0 merges one manifest."""
    import threading

    from wsss.stages import runner

    ds = open_dataset(demo_root)
    local = threading.local()
    monkeypatch.setattr(runner, "dist_info", lambda: (getattr(local, "rank", 0), 2))
    results = {}

    def worker(r):
        local.rank = r
        results[r] = _run(ds, tmp_path / "run")

    threads = [threading.Thread(target=worker, args=(r,)) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stage = tmp_path / "run/seeds/threshold"
    assert results[1].total == 6 and results[0].done == 12  # rank 1 did its shard, rank 0 reports the merge
    rows = read_csv(stage / "manifest.csv")
    assert [r["image_id"] for r in rows] == ds.ids and {r["status"] for r in rows} == {"ok"}
    assert len(list((stage / "masks").iterdir())) == 12 and not (stage / ".parts").exists()
    info = json.loads((stage / "stage.json").read_text())
    assert info["world_size"] == 2 and info["quality"]["images"] == 12


def test_resume_survives_a_relative_path_and_a_grown_split(demo_copy, tmp_path, monkeypatch):
    split = demo_copy / "ImageSets/Segmentation/train.txt"
    full = split.read_text()
    split.write_text("\n".join(full.split()[:4]) + "\n")
    _run(open_dataset(demo_copy, "train"), tmp_path / "run")
    split.write_text(full)
    monkeypatch.chdir(demo_copy.parent)
    summary = _run(open_dataset("data", "train"), tmp_path / "run")
    assert summary.skipped == 4 and summary.done == len(full.split()) - 4


def test_the_torch_device_stays_out_of_a_stage_folders_config_hash(demo_root, tmp_path):
    from wsss.config import BoxSupConfig, CamConfig, SelfTrainConfig, hashed_dict
    from wsss.datasets import open_dataset
    from wsss.stages.runner import prepare_stage_dir

    for cls in (CamConfig, SelfTrainConfig, BoxSupConfig):
        assert hashed_dict(cls(device="cpu")) == hashed_dict(cls()) and "device" not in hashed_dict(cls())
    assert hashed_dict(BoxSupConfig())["train"]["iterations"] == 2000  # a nested config is hashed field by field
    ds = open_dataset(demo_root, "train")
    stage = tmp_path / "seeds" / "cam"
    a = prepare_stage_dir(stage, stage="seeds", method="cam", config=CamConfig(device="cpu"), dataset=ds)
    b = prepare_stage_dir(stage, stage="seeds", method="cam", config=CamConfig(device="auto"), dataset=ds)
    assert a == b  # the folder made on the CPU resumes under --device auto
    with pytest.raises(StageError, match="another config"):
        prepare_stage_dir(stage, stage="seeds", method="cam", config=CamConfig(bg_threshold=0.3), dataset=ds)


def test_load_once_reloads_only_when_the_file_or_the_options_change(tmp_path):
    import os

    from wsss.stages.runner import load_once

    path = tmp_path / "net.pt"
    path.write_bytes(b"1")
    calls = []

    def load():
        calls.append(path.read_bytes())
        return len(calls)

    assert load_once(path, load, "cpu") == 1 and load_once(path, load, "cpu") == 1
    assert load_once(path, load, "cuda") == 2  # other options: loaded again
    path.write_bytes(b"2")
    os.utime(path, ns=(1, 10 ** 18))  # a rewritten file has another mtime
    assert load_once(path, load, "cuda") == 3 and calls[-1] == b"2"
    # a missing file is left to the loader, which names it
    with pytest.raises(FileNotFoundError):
        load_once(tmp_path / "missing.pt", lambda: open(tmp_path / "missing.pt"))
