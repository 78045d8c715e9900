"""Random walk of CAMs over feature affinity: the grid, the transition matrix, a walk with a known answer, the
``wsss refine --affinity`` stage and its errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from wsss.cli import main
from wsss.io import read_mask, read_scores
from wsss.seeds.affinity import (affinity_features, grid_pairs, pair_dots, propagate_cams, random_walk,
                                  transition_matrix)
from wsss.seeds.cam import cam_seed_mask


def test_grid_pairs_counts_and_symmetry():
    src, dst = grid_pairs(3, 3, 1.0)
    # self + 4-neighbours: corners 3, edge centres 4, the centre 5
    assert len(src) == 4 * 3 + 4 * 4 + 5
    assert set(zip(src.tolist(), dst.tolist())) == set(zip(dst.tolist(), src.tolist()))
    assert (4, 4) in set(zip(src.tolist(), dst.tolist())) and (0, 4) not in set(zip(src.tolist(), dst.tolist()))
    src, dst = grid_pairs(5, 5, 1.5)  # diagonals join at radius sqrt(2) <= 1.5
    assert (0, 6) in set(zip(src.tolist(), dst.tolist()))


def _two_halves(h=8, w=8):
    """Features: left half (1, 0), right half (0, 1): cos 1 within a half, 0 across."""
    f = torch.zeros(2, h, w)
    f[0, :, : w // 2] = 1
    f[1, :, w // 2:] = 1
    return f


def test_transition_rows_sum_to_one_and_no_mass_crosses_an_edge():
    t = torch.from_numpy(transition_matrix(_two_halves(), radius=2, beta=8).toarray())
    np.testing.assert_allclose(t.sum(1).numpy(), 1.0, atol=1e-6)
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    left = left.flatten()
    assert t[left][:, ~left].abs().max() == 0 and t[~left][:, left].abs().max() == 0
    # within a half every neighbour weighs the same (cos 1): a corner pixel's row is uniform over its neighbours
    row = t[0][t[0] > 0]
    np.testing.assert_allclose(row.numpy(), 1.0 / len(row), atol=1e-6)


def test_random_walk_fills_the_region_a_cam_touches_and_stops_at_the_edge():
    # a 32x32 image on an 8x8 grid (stride 4); the CAM fires on one corner block of the left half only
    cams = np.zeros((1, 32, 32), np.float32)
    cams[0, :8, :8] = 1.0
    t = transition_matrix(_two_halves(), radius=2, beta=8)
    walked = random_walk(cams, t, (8, 8), log_t=7)
    assert walked.shape == cams.shape and walked.dtype == np.float32
    assert walked.max() == pytest.approx(1.0)
    mask = cam_seed_mask(walked, [5], bg_threshold=0.4)
    gt = np.zeros((32, 32), np.uint8)
    gt[:, :16] = 5
    # the bilinear upsampling blurs the two grid columns at the edge; everywhere else exactly the half
    inner = np.ones((32, 32), bool)
    inner[:, 12:20] = False
    np.testing.assert_array_equal(mask[inner], gt[inner])
    before = cam_seed_mask(cams, [5], bg_threshold=0.4)
    assert (before == 5).sum() == 64 and (mask == 5).sum() >= 14 * 32
    # no class: nothing to walk
    assert random_walk(np.zeros((0, 32, 32), np.float32), t, (8, 8)).shape == (0, 32, 32)


def test_propagate_cams_on_a_small_classifier(rng):
    from wsss.models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier(num_classes=3, backbone="resnet18").eval()
    image = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    feats = affinity_features(model, image, stride=8)
    assert feats.shape == (128 + 512, 5, 7)
    # each part is unit length per pixel
    np.testing.assert_allclose(feats[:128].norm(dim=0).numpy(), 1.0, atol=1e-4)
    cams = np.zeros((2, 40, 56), np.float32)
    cams[0, 5:15, 5:20] = 1.0
    cams[1, 25:35, 30:50] = 0.5
    out = propagate_cams(model, image, cams, log_t=3)
    assert out.shape == cams.shape and out.min() >= 0
    np.testing.assert_allclose(out.reshape(2, -1).max(1), 1.0, atol=1e-6)
    assert propagate_cams(model, image, cams[:0]).shape == (0, 40, 56)
    with pytest.raises(ValueError, match="no backbone map at stride 2"):
        affinity_features(model, image, stride=2)
    with pytest.raises(ValueError, match="differ in size"):
        propagate_cams(model, image, cams[:, :20])


TINY_CAM = ["--backbone", "resnet18", "--epochs", "1", "--batch-size", "6", "--crop-size", "48",
            "--resize-long", "64,80", "--lr", "0.001", "--optimizer", "adamw", "--scales", "1.0"]


@pytest.mark.slow
def test_refine_affinity_stage_cli(demo_root, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(main, ["seeds", "--method", "cam", "--dataset", str(demo_root), "--run", str(run),
                               *TINY_CAM])
    assert res.exit_code == 0, res.output
    cam = run / "seeds" / "cam"
    args = ["refine", "--affinity", "--input", str(cam), "--dataset", str(demo_root), "--run", str(run),
            "--log-t", "4", "--bg-threshold", "0.3"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    stage = run / "refined" / "affinity"
    info = json.loads((stage / "stage.json").read_text())
    assert info["config"]["log_t"] == 4 and info["config"]["bg_threshold"] == 0.3
    rows = list(csv.DictReader(open(stage / "manifest.csv")))
    assert rows and all(r["status"] == "ok" for r in rows)
    from wsss.datasets import open_dataset
    from wsss.trainers.cam_classifier import load_classifier

    dataset = open_dataset(demo_root)
    model = load_classifier(cam / "classifier.pt")
    for image_id in dataset.ids[:3]:
        sample = dataset.load(image_id)
        scores, ids = read_scores(stage / "scores" / f"{image_id}.npz")
        cams, cam_ids = read_scores(cam / "scores" / f"{image_id}.npz")
        assert ids.tolist() == cam_ids.tolist() == sorted(sample.image_labels)
        # the stored maps are the walk of the stored CAMs over the cam stage's classifier
        expected = propagate_cams(model, sample.image, cams, log_t=4)
        np.testing.assert_allclose(scores, expected, atol=2e-3)
        np.testing.assert_array_equal(read_mask(stage / "masks" / f"{image_id}.png"),
                                      cam_seed_mask(scores, ids, bg_threshold=0.3))
    # resumes: nothing rewritten
    res = runner.invoke(main, args)
    assert res.exit_code == 0 and f"0 written, {len(dataset.ids)} resumed" in res.output
    # a stage without scores cannot be walked; a missing classifier is named
    runner.invoke(main, ["seeds", "--method", "threshold", "--dataset", str(demo_root), "--run", str(run)])
    res = runner.invoke(main, ["refine", "--affinity", "--input", str(run / "seeds" / "threshold"),
                               "--dataset", str(demo_root), "--run", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "keeps no scores/" in res.output
    res = runner.invoke(main, [*args[:-4], "--run", str(tmp_path / "r3"), "--checkpoint", str(tmp_path / "no.pt")])
    assert res.exit_code == 2 and "no.pt: no such file" in res.output
    res = runner.invoke(main, [*args[:-4], "--run", str(tmp_path / "r4"), "--radius", "0.5"])
    assert res.exit_code == 2 and "--radius 0.5" in res.output


def test_pair_dots_equals_the_gathered_products(rng):
    flat = torch.from_numpy(rng.normal(size=(6, 11 * 13)).astype(np.float32))
    for radius in (1.0, 2.5, 5.0):
        src, dst = grid_pairs(11, 13, radius)
        want = (flat[:, src] * flat[:, dst]).sum(0)
        for band in (1, 3, 8, 20):
            np.testing.assert_allclose(pair_dots(flat, src, dst, width=13, radius=radius, band=band).numpy(),
                                       want.numpy(), rtol=1e-5, atol=1e-5)
