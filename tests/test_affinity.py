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


# ------------------------------------------------------------------------- AffinityNet (learned affinity)
def test_confident_labels_keep_the_sure_pixels_and_leave_the_rest_unused():
    from wsss.trainers.affinity_head import confident_labels

    maps = np.zeros((2, 16, 16), np.float32)
    maps[0, :8, :8] = 1.0      # class 3: top-left cell of the 2x2 grid, at its maximum
    maps[1, :8, 8:] = 0.4      # class 7: top-right at 0.4 of its maximum ...
    maps[1, 8:, 8:] = 1.0      # ... and bottom-right at it
    labels = confident_labels(maps, [3, 7], (2, 2), fg=0.5, bg=0.1)
    # top-right is neither sure (0.4 < 0.5) nor background (0.4 >= 0.1): unused; bottom-left: no map fires
    np.testing.assert_array_equal(labels, [[3, 255], [0, 7]])
    assert (confident_labels(maps[:0], [], (3, 4), fg=0.5, bg=0.1) == 0).all()


def test_affinity_loss_is_zero_for_a_perfect_embedding_and_psas_value_for_a_flat_one():
    from wsss.trainers.affinity_head import affinity_loss, half_offsets

    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :, 3:] = 5
    labels[0, 0, 0] = 255
    perfect = torch.zeros(1, 4, 6, 6)
    perfect[0, :, :, 3:] = 50.0  # far apart across the edge (affinity e^-50), equal within a side (1)
    assert float(affinity_loss(perfect, labels, radius=2)) == pytest.approx(0.0, abs=1e-4)
    flat = torch.zeros(1, 4, 6, 6)  # every affinity 1: the differing pairs cost -log(1e-5) each
    assert float(affinity_loss(flat, labels, radius=2)) == pytest.approx(0.5 * -np.log(1e-5), rel=1e-3)
    assert (0, 1) in half_offsets(2) and (0, -1) not in half_offsets(2) and (0, 0) not in half_offsets(2)
    disc = [(dy, dx) for dy in range(-5, 6) for dx in range(-5, 6) if dy * dy + dx * dx <= 25]
    assert len(half_offsets(5)) * 2 + 1 == len(disc) == 81
    # all unused: no pair counts, the loss is 0 (and still differentiable)
    e = torch.zeros(1, 4, 6, 6, requires_grad=True)
    loss = affinity_loss(e, torch.full((1, 6, 6), 255), radius=2)
    loss.backward()
    assert float(loss.detach()) == 0.0


def test_learned_transition_keeps_the_walk_inside_an_embedding_region():
    from wsss.seeds.affinity import learned_transition

    e = torch.zeros(3, 8, 8)
    e[:, :, 4:] = 1.0  # mean |difference| 1 across the edge: affinity e^-beta
    t = torch.from_numpy(learned_transition(e, radius=2, beta=32).toarray())
    np.testing.assert_allclose(t.sum(1).numpy(), 1.0, atol=1e-6)
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    left = left.flatten()
    assert t[left][:, ~left].max() < 1e-12 and t[~left][:, left].max() < 1e-12
    cams = np.zeros((1, 64, 64), np.float32)
    cams[0, :16, :16] = 1.0
    mask = cam_seed_mask(random_walk(cams, learned_transition(e, radius=2, beta=32), (8, 8), log_t=7), [2],
                         bg_threshold=0.4)
    assert (mask[:, :24] == 2).all() and (mask[:, 40:] == 0).all()


@pytest.mark.slow
def test_refine_affinitynet_stage_cli(demo_root, tmp_path):
    from wsss.datasets import open_dataset
    from wsss.seeds.affinity import propagate_cams_learned
    from wsss.trainers.affinity_head import load_affinity_net
    from wsss.trainers.cam_classifier import load_classifier

    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(main, ["seeds", "--method", "cam", "--dataset", str(demo_root), "--run", str(run),
                               *TINY_CAM])
    assert res.exit_code == 0, res.output
    cam = run / "seeds" / "cam"
    res = runner.invoke(main, ["refine", "--affinity", "--input", str(cam), "--dataset", str(demo_root),
                               "--run", str(run), "--log-t", "4"])
    assert res.exit_code == 0, res.output
    args = ["refine", "--affinitynet", "--input", str(cam), "--labels", str(run / "refined" / "affinity"),
            "--dataset", str(demo_root), "--run", str(run), "--epochs", "3", "--batch-size", "4", "--crop-size", "48",
            "--log-t", "4", "--bg-threshold", "0.3"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    stage = run / "refined" / "affinitynet"
    info = json.loads((stage / "stage.json").read_text())
    assert info["config"]["epochs"] == 3 and info["config"]["beta"] == 32.0
    rows = list(csv.DictReader(open(stage / "manifest.csv")))
    dataset = open_dataset(demo_root)
    assert len(rows) == len(dataset.ids) and all(r["status"] == "ok" for r in rows)
    log_rows = list(csv.DictReader(open(stage / "affinity_train_log.csv")))
    assert [int(r["epoch"]) for r in log_rows] == [1, 2, 3] and all(int(r["images"]) == 12 for r in log_rows)
    head = stage / "affinity_head.pt"
    net = load_affinity_net(head, load_classifier(cam / "classifier.pt"))
    # the backbone stayed the classifier's: training moved the head only
    classifier = load_classifier(cam / "classifier.pt")
    for name, value in classifier.backbone.state_dict().items():
        torch.testing.assert_close(net.backbone.state_dict()[name], value)
    for image_id in dataset.ids[:3]:
        sample = dataset.load(image_id)
        scores, ids = read_scores(stage / "scores" / f"{image_id}.npz")
        cams, cam_ids = read_scores(cam / "scores" / f"{image_id}.npz")
        assert ids.tolist() == cam_ids.tolist() == sorted(sample.image_labels)
        expected = propagate_cams_learned(net, sample.image, cams, log_t=4)
        np.testing.assert_allclose(scores, expected, atol=2e-3)
        np.testing.assert_array_equal(read_mask(stage / "masks" / f"{image_id}.png"),
                                      cam_seed_mask(scores, ids, bg_threshold=0.3))
    # resumes: nothing trained or written again
    before = head.stat().st_mtime_ns
    res = runner.invoke(main, args)
    assert res.exit_code == 0 and f"0 written, {len(dataset.ids)} resumed" in res.output
    assert head.stat().st_mtime_ns == before
    # a trained head labels other images (here: another run folder) without training
    res = runner.invoke(main, ["refine", "--affinitynet", "--input", str(cam), "--head", str(head),
                               "--dataset", str(demo_root), "--run", str(tmp_path / "r2"), "--log-t", "4",
                               "--bg-threshold", "0.3"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "r2" / "refined" / "affinitynet" / "affinity_head.pt").exists()
    other, _ = read_scores(tmp_path / "r2" / "refined" / "affinitynet" / "scores" / f"{dataset.ids[0]}.npz")
    np.testing.assert_array_equal(other, read_scores(stage / "scores" / f"{dataset.ids[0]}.npz")[0])
    # errors: --head and --labels together; a head that is not one; regions from a stage without scores
    def refine(run_dir, *extra):
        return runner.invoke(main, ["refine", "--affinitynet", "--input", str(cam), "--dataset", str(demo_root),
                                    "--run", str(tmp_path / run_dir), "--epochs", "1", "--crop-size", "48", *extra])

    res = refine("r3", "--head", str(head), "--labels", str(run / "refined" / "affinity"))
    assert res.exit_code == 2 and "--labels (what to train on) does not apply" in res.output
    res = refine("r4", "--head", str(cam / "classifier.pt"))
    assert res.exit_code == 2 and "not a wsss affinity head" in res.output
    runner.invoke(main, ["seeds", "--method", "threshold", "--dataset", str(demo_root), "--run", str(run)])
    res = refine("r5", "--labels", str(run / "seeds" / "threshold"))
    assert res.exit_code == 2 and "keeps no scores/ to learn the affinity from" in res.output


def test_the_head_learns_to_separate_two_regions_the_backbone_sees_apart(rng):
    from wsss.models.classifier import build_classifier
    from wsss.trainers.affinity_head import affinity_loss, build_affinity_net

    torch.manual_seed(0)
    net = build_affinity_net(build_classifier(num_classes=3, backbone="resnet18").eval(), dim=16)
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = (200, 40, 40)
    image[:, 32:] = (40, 40, 200)
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    x = net.normalise(torch.from_numpy(image).permute(2, 0, 1)[None])
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :, 4:] = 3
    labels[0, :, 3:5] = 255  # the cells at the edge are not sure
    optimizer = torch.optim.Adam(net.head.parameters(), lr=0.01)
    net.train()
    losses = []
    for _ in range(40):
        loss = affinity_loss(net(x), labels, radius=3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert not any(p.requires_grad for p in net.backbone.parameters()) and not net.backbone.training
    with torch.no_grad():
        e = net.eval()(x)[0]
    aff = lambda a, b: float(torch.exp(-(e[:, a[0], a[1]] - e[:, b[0], b[1]]).abs().mean()))  # noqa: E731
    assert losses[-1] < 0.3 * losses[0]
    assert aff((2, 1), (5, 1)) > 0.7 and aff((2, 6), (5, 6)) > 0.7  # within a side
    assert aff((2, 1), (2, 6)) < 0.1  # across the edge
