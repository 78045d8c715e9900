"""Saliency seeds: net contract, GrabCut targets, seed-mask rule, quality measures, training, the stage and CLI."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from wsss.cli import main
from wsss.errors import ConfigError
from wsss.io import read_mask, read_scores
from wsss.seeds.saliency import (
    SALIENCY_CLASS_ID,
    SaliencyQuality,
    make_optimizer,
    mask_targets,
    predict_saliency,
    resize_pair,
    saliency_seed_mask,
    scale_boxes,
    targets_from_boxes,
    train_saliency,
)


def disc_scene(seed=0, h=60, w=80):
    """A bright textured disc on a darker noisy background; returns image, GT disc (bool), its box."""
    rng = np.random.default_rng(seed)
    img = rng.normal(70, 12, (h, w, 3))
    disc = np.zeros((h, w), np.uint8)
    cv2.circle(disc, (40, 30), 15, 1, -1)
    img[disc.astype(bool)] = rng.normal((200, 60, 50), 10, (int(disc.sum()), 3))
    ys, xs = np.nonzero(disc)
    box = np.array([[3, xs.min() - 3, ys.min() - 3, xs.max() + 4, ys.max() + 4]])
    return np.clip(img, 0, 255).astype(np.uint8), disc.astype(bool), box


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_saliency_net_forward_backward():
    from wsss.models.saliency_net import SaliencyNet, saliency_net

    net = saliency_net(backbone="resnet18")
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    y = net(x)
    assert y.shape == (2, 1, 64, 64)
    y.mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    net.eval()
    assert net(torch.rand(1, 3, 50, 70)).shape == (1, 1, 50, 70)  # sizes not divisible by 32
    with pytest.raises(ValueError, match="backbone"):
        SaliencyNet(backbone="vgg16")
    with pytest.raises(ConfigError, match="--weights 'coco': no such file; give --weights imagenet"):  # one parser
        SaliencyNet(weights="coco")


def test_grabcut_targets_follow_the_object():
    img, disc, box = disc_scene()
    x0, y0, x1, y1 = box[0, 1:]
    outside = np.ones_like(disc)
    outside[y0:y1, x0:x1] = False
    target = targets_from_boxes(img, box)
    assert set(np.unique(target)) <= {0, 1, 255}
    assert (target[outside] == 0).all()
    assert iou(target == 1, disc) > 0.7
    assert (targets_from_boxes(img, np.zeros((0, 5))) == 0).all()


def test_mask_targets_and_seed_mask_rules():
    mask = np.array([[0, 3, 255], [7, 0, 1]], np.uint8)
    np.testing.assert_array_equal(mask_targets(mask), [[0, 1, 255], [1, 0, 1]])
    sal = np.array([[0.1, 0.5, 0.9], [0.49, 0.7, 0.0]], np.float32)
    np.testing.assert_array_equal(saliency_seed_mask(sal, (4,)), [[0, 4, 4], [0, 4, 0]])
    np.testing.assert_array_equal(saliency_seed_mask(sal, (4, 2)), [[0, 255, 255], [0, 255, 0]])
    np.testing.assert_array_equal(saliency_seed_mask(sal, ()), np.zeros((2, 3)))
    np.testing.assert_array_equal(saliency_seed_mask(sal, (4,), saliency_threshold=0.8), [[0, 0, 4], [0, 0, 0]])


def test_resize_and_scale_boxes():
    img = np.zeros((50, 100, 3), np.uint8)
    small, tgt = resize_pair(img, np.zeros((50, 100), np.uint8), 32)
    assert small.shape == (32, 32, 3) and tgt.shape == (32, 32)
    boxes = scale_boxes(np.array([[2, 10, 5, 60, 50]]), (50, 100), 32)
    assert boxes.tolist() == [[2, 3, 3, 20, 32]]


def test_saliency_quality_known_values():
    gt = np.zeros((10, 10), np.uint8)
    gt[:, :3] = 5  # 30 % foreground
    q = SaliencyQuality()
    q.add((gt > 0).astype(np.float32), gt)
    r = q.result()
    assert r["mae"] == 0 and r["max_f"] == 1 and r["adaptive_f"] == 1 and r["f_at_threshold"] == 1
    q = SaliencyQuality()
    q.add(np.full((10, 10), 0.5, np.float32), gt)
    r = q.result()
    assert r["mae"] == 0.5
    # every pixel predicted salient: precision 0.3, recall 1 -> F = 1.3 * 0.3 / (0.3 * 0.3 + 1)
    assert r["max_f"] == pytest.approx(1.3 * 0.3 / (0.09 + 1), abs=1e-4)
    gt[0, 0] = 255  # ignored pixel
    q = SaliencyQuality()
    sal = (gt == 5).astype(np.float32)
    sal[0, 0] = 1.0
    q.add(sal, gt)
    assert q.result()["mae"] == 0


def test_saliency_quality_foreground_iou_precision_recall_sum_pixels_over_images():
    gt = np.zeros((10, 10), np.uint8)
    gt[:, :4] = 3  # 40 object pixels
    sal = np.zeros((10, 10), np.float32)
    sal[:, 2:6] = 0.9  # 40 salient pixels, 20 of them on the object
    q = SaliencyQuality(threshold=0.5)
    q.add(sal, gt)
    r = q.result()
    assert (r["fg_iou"], r["fg_precision"], r["fg_recall"]) == (pytest.approx(100 * 20 / 60, abs=0.01), 50.0, 50.0)
    gt2 = np.zeros((10, 10), np.uint8)
    gt2[0, :] = 255  # ignored: left out, even though salient
    q.add(np.ones((10, 10), np.float32), gt2)  # 90 false positives, no object
    r = q.result()
    assert (r["fg_iou"], r["fg_precision"], r["fg_recall"]) == (pytest.approx(100 * 20 / 150, abs=0.01),
                                                               pytest.approx(100 * 20 / 130, abs=0.01), 50.0)


def _train_demo(root, epochs, size=64, batch_size=8):
    from wsss.datasets import open_dataset
    from wsss.models.saliency_net import saliency_net

    data = open_dataset(root, "train")
    images, targets = [], []
    for i in data.ids:
        s = data.load(i)
        small, _ = resize_pair(s.image, None, size)
        images.append(small)
        targets.append(targets_from_boxes(small, scale_boxes(s.boxes, s.image.shape[:2], size)))
    torch.manual_seed(0)
    net = saliency_net()
    opt = make_optimizer(net, lr=1e-3, weight_decay=1e-4)
    losses = train_saliency(net, opt, images, targets, epochs=epochs, batch_size=batch_size, lr=1e-3,
                            progress=False)
    return net, losses


@pytest.mark.slow
def test_training_decreases_loss_and_beats_trivial_map(tmp_path):
    """30 generated training scenes, 10 held-out ones: the trained map beats a constant map (the held-out
    foreground share) and a centre prior on MAE and max F-measure."""
    from wsss.datasets import make_demo_data, open_dataset

    root = make_demo_data(tmp_path / "data", 40, size=(64, 80), seed=5)
    net, losses = _train_demo(root, epochs=15)
    assert losses[-1] < 0.8 * losses[0]
    val = open_dataset(root, "val")
    gts = {i: val.load_gt(i) for i in val.ids}
    share = float(np.mean([(g > 0).mean() for g in gts.values()]))
    yy, xx = np.mgrid[0:64, 0:80]
    centre = np.exp(-0.5 * (((yy - 32) / 16.0) ** 2 + ((xx - 40) / 20.0) ** 2)).astype(np.float32)
    learned, constant, prior = SaliencyQuality(), SaliencyQuality(), SaliencyQuality()
    for image_id, gt in gts.items():
        sal = predict_saliency(net, val.load(image_id).image, input_size=64)
        assert sal.shape == gt.shape and 0 <= sal.min() and sal.max() <= 1
        learned.add(sal, gt)
        constant.add(np.full(gt.shape, share, np.float32), gt)
        prior.add(centre, gt)
    a, c, p = learned.result(), constant.result(), prior.result()
    assert a["mae"] < min(c["mae"], p["mae"])
    assert a["max_f"] > max(c["max_f"], p["max_f"]) + 0.2


def test_training_resume_repeats_schedule(demo_root):
    """Two epochs in one go == one epoch, a checkpoint round trip, then the second epoch."""
    import io

    from wsss.models.saliency_net import saliency_net

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    targets = [(im.mean(axis=2) > 127).astype(np.uint8) for im in images]

    def fresh():
        torch.manual_seed(0)
        net = saliency_net()
        return net, make_optimizer(net, lr=1e-3, weight_decay=0.0)

    net_a, opt_a = fresh()
    full = train_saliency(net_a, opt_a, images, targets, epochs=2, batch_size=2, progress=False)
    net_b, opt_b = fresh()
    saved = {}

    def stop_after_first(epoch, loss):
        buf = io.BytesIO()
        torch.save({"model": net_b.state_dict(), "optimizer": opt_b.state_dict()}, buf)
        saved[epoch] = buf.getvalue()

    first = train_saliency(net_b, opt_b, images, targets, epochs=2, batch_size=2, progress=False,
                           on_epoch=stop_after_first)
    state = torch.load(io.BytesIO(saved[0]), weights_only=True)
    net_c, opt_c = fresh()
    net_c.load_state_dict(state["model"])
    opt_c.load_state_dict(state["optimizer"])
    second = train_saliency(net_c, opt_c, images, targets, epochs=2, batch_size=2, start_epoch=1, progress=False)
    assert first == pytest.approx(full)
    assert second == pytest.approx(full[1:], rel=1e-4)


# ------------------------------------------------------------------------------------------- stage + CLI
SMALL = ["--input-size", "64", "--epochs", "6", "--batch-size", "3"]


@pytest.mark.slow
def test_saliency_stage_cli_end_to_end(demo_root, tmp_path):
    from wsss.datasets import open_dataset

    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(main, ["seeds", "--method", "saliency", "--dataset", str(demo_root), "--split", "train",
                               "--run", str(run), *SMALL])
    assert res.exit_code == 0, res.output
    stage = run / "seeds" / "saliency"
    for name in ("stage.json", "manifest.csv", "saliency.pt", "checkpoint.pt", "train_log.csv"):
        assert (stage / name).exists(), name
    with open(stage / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert float(rows[-1]["mean_loss"]) < float(rows[0]["mean_loss"])
    with open(stage / "manifest.csv") as fh:
        manifest = list(csv.DictReader(fh))
    assert len(manifest) == 9 and all(r["status"] == "ok" for r in manifest)
    first = manifest[0]["image_id"]
    scores, ids = read_scores(stage / "scores" / f"{first}.npz")
    assert scores.shape == (1, 64, 80) and ids.tolist() == [SALIENCY_CLASS_ID]
    png = cv2.imread(str(stage / "saliency" / f"{first}.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and png.shape == (64, 80)
    assert np.abs(png / 255.0 - scores[0]).max() < 0.01
    assert set(np.unique(read_mask(stage / "masks" / f"{first}.png"))) <= {0, 1, 2, 3, 4, 5, 255}
    assert len(list((stage / "targets").glob("*.png"))) == 9
    info = json.loads((stage / "stage.json").read_text())
    # trained on the boxes of the very images it labels: recorded (not tag-only), and the maps' quality vs the GT
    assert info["saliency_training"]["labelled_images_seen_in_training"] == 9
    q = info["saliency_quality"]
    ref = SaliencyQuality()
    for row in manifest:
        ref.add(cv2.imread(str(stage / "saliency" / f"{row['image_id']}.png"), cv2.IMREAD_UNCHANGED) / 255.0,
                open_dataset(demo_root, "train").load_gt(row["image_id"]))
    assert q["images"] == 9 and q["fg_iou"] == ref.result()["fg_iou"] and 0 < q["fg_iou"] <= 100

    # re-running resumes everything (training complete, images finished)
    res = runner.invoke(main, ["seeds", "--method", "saliency", "--dataset", str(demo_root), "--split", "train",
                               "--run", str(run), *SMALL])
    assert res.exit_code == 0 and "0 written, 9 resumed" in res.output, res.output

    # --checkpoint skips training: predicting the val split from the trained model
    ckpt = stage / "saliency.pt"
    res = runner.invoke(main, ["seeds", "--method", "saliency", "--dataset", str(demo_root), "--split", "val",
                               "--run", str(tmp_path / "val"), "--checkpoint", str(ckpt), "--input-size", "64",
                               "--workers", "2"])
    assert res.exit_code == 0, res.output
    val_stage = tmp_path / "val" / "seeds" / "saliency"
    assert not (val_stage / "checkpoint.pt").exists() and not (val_stage / "targets").exists()
    val_info = json.loads((val_stage / "stage.json").read_text())
    assert val_info["saliency_training"]["labelled_images_seen_in_training"] == 0  # trained on train, labels val
    assert val_info["saliency_quality"]["images"] == 3
    val_scores, _ = read_scores(val_stage / "scores" / "demo_0011.npz")
    from wsss.stages.saliency import load_saliency_net

    s = open_dataset(demo_root, "val").load("demo_0011")
    direct = predict_saliency(load_saliency_net(ckpt), s.image, input_size=64)
    assert np.abs(val_scores[0] - direct).max() < 2e-3  # float16 storage


def test_saliency_stage_errors(demo_root, tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.pt"
    torch.save({"something": torch.zeros(2)}, bad)
    res = runner.invoke(main, ["seeds", "--method", "saliency", "--dataset", str(demo_root), "--run",
                               str(tmp_path / "r"), "--checkpoint", str(bad)])
    assert res.exit_code == 2 and "not a wsss saliency checkpoint" in res.output
    res = runner.invoke(main, ["seeds", "--method", "saliency", "--dataset", str(demo_root), "--run",
                               str(tmp_path / "r2"), "--checkpoint", str(tmp_path / "missing.pt")])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(main, ["seeds", "--method", "saliency", "--dataset", str(demo_root), "--run",
                               str(tmp_path / "r3"), "--input-size", "16"])
    assert res.exit_code == 2 and "--input-size" in res.output
    res = runner.invoke(main, ["seeds", "--method", "saliency", "--dataset", str(demo_root), "--run",
                               str(tmp_path / "r4"), "--polarity", "bright"])
    assert res.exit_code == 2 and "does not apply" in res.output
    res = runner.invoke(main, ["seeds", "--method", "saliency", "--dataset", str(demo_root), "--run",
                               str(tmp_path / "r5"), "--weights", "coco"])
    assert res.exit_code == 2 and "--weights 'coco': no such file; give auto, imagenet, none" in res.output
    assert not (tmp_path / "r5").exists()  # refused before any stage folder or training


def test_saliency_stage_mask_targets_from_separate_dataset(demo_root, tmp_path):
    """--saliency-data + --targets masks: targets are the other dataset's masks made binary."""
    from wsss.config import SaliencyConfig
    from wsss.datasets import open_dataset
    from wsss.stages.saliency import prepare_training_data

    config = SaliencyConfig(saliency_data=str(demo_root), saliency_split="val", targets="masks", input_size=32)
    train_set = open_dataset(config.saliency_data, config.saliency_split)
    images, targets, skipped = prepare_training_data(config, train_set, tmp_path)
    assert len(images) == 3 and not skipped
    gt = train_set.load_gt(train_set.ids[0])
    _, expect = resize_pair(np.zeros((*gt.shape, 3), np.uint8), mask_targets(gt), 32)
    np.testing.assert_array_equal(targets[0], expect)
    assert (tmp_path / "targets" / f"{train_set.ids[0]}.png").exists()


def test_training_time_budget_stops_early():
    from wsss.models.saliency_net import saliency_net

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    targets = [(im[..., 0] > 127).astype(np.uint8) for im in images]
    net = saliency_net()
    opt = make_optimizer(net, lr=1e-3, weight_decay=0.0)
    calls = []
    losses = train_saliency(net, opt, images, targets, epochs=5, batch_size=2, progress=False, max_seconds=1e-6,
                            on_epoch=lambda e, loss: calls.append(e))
    assert len(losses) == 1 and calls == [0]  # one step, then the spent budget ends training
    assert opt.param_groups[0]["lr"] == 0.0  # the LR decayed over the (spent) budget
    assert not net.training


@pytest.mark.realdata
def test_grabcut_targets_on_voc_dev():
    """GrabCut-from-box targets (the saliency net's training labels) against the GT foreground of 12 voc-dev
    train images at the net's input size: F-measure well above the box fill's."""
    from conftest import voc_dev

    from wsss.datasets import open_dataset

    data = open_dataset(voc_dev(), "train")
    grabcut, boxfill = SaliencyQuality(), SaliencyQuality()
    for image_id in data.ids[:12]:
        s = data.load(image_id)
        small, gt = resize_pair(s.image, s.gt, 112)
        boxes = scale_boxes(s.boxes, s.image.shape[:2], 112)
        target = targets_from_boxes(small, boxes).astype(np.float32)
        target[target == 255] = 0.0  # doubtful counts as background here
        grabcut.add(target, gt)
        fill = np.zeros(gt.shape, np.float32)
        for _, x0, y0, x1, y1 in boxes:
            fill[y0:y1, x0:x1] = 1
        boxfill.add(fill, gt)
    g, b = grabcut.result(), boxfill.result()
    assert g["f_at_threshold"] > 0.7 and g["f_at_threshold"] > b["f_at_threshold"]
    assert g["mae"] < b["mae"]
