"""BoxSup: candidate generation, selection, labels, the update rule and seeded top-k draws (known answers)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from wsss.label.boxsup import (
    NO_CANDIDATE,
    best_box_fit,
    box_iou,
    candidate_costs,
    image_rng,
    initial_selection,
    labels_from_selection,
    select_candidates,
    update_selection,
)
from wsss.label.candidates import Candidates, candidates_from_masks, generate_candidates


def _rect(shape, x0, y0, x1, y1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def _disc(shape, cx, cy, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


SHAPE = (40, 50)


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])


def test_initial_selection_picks_best_box_match_and_labels():
    obj = _rect(SHAPE, 10, 8, 30, 28)          # the object, box [10, 8, 30, 28]
    half = _rect(SHAPE, 10, 8, 20, 28)         # half of it: box IoU 0.5
    big = _rect(SHAPE, 5, 3, 40, 35)           # a larger blob: box IoU 400/1120
    other = _disc(SHAPE, 42, 30, 5)            # a second object, box [37, 25, 48, 36]
    cands = candidates_from_masks([half, big, obj, other])
    boxes = np.array([[3, 10, 8, 30, 28], [1, 37, 25, 48, 36]])
    sel = initial_selection(cands, boxes)
    assert sel.tolist() == [2, 3]
    labels = labels_from_selection(cands, boxes, sel)
    expect = np.zeros(SHAPE, np.uint8)
    expect[obj] = 3
    expect[other] = 1
    np.testing.assert_array_equal(labels, expect)


def test_initial_selection_tie_tolerance_prefers_the_larger_near_tie():
    core = _rect(SHAPE, 10, 8, 30, 28) & ~_rect(SHAPE, 12, 10, 28, 26)   # frame: box IoU 1.0, 72 pixels
    fuller = _rect(SHAPE, 10, 9, 30, 28)                                   # box IoU 0.95, 380 pixels
    far = _rect(SHAPE, 10, 8, 22, 28)                                      # box IoU 0.6, 240 pixels
    cands = candidates_from_masks([core, far, fuller])
    box = np.array([[1, 10, 8, 30, 28]])
    assert initial_selection(cands, box, tie_tolerance=0.0).tolist() == [0]
    assert initial_selection(cands, box, tie_tolerance=0.06).tolist() == [2]
    assert initial_selection(cands, box, tie_tolerance=0.5).tolist() == [2]


def test_boxes_reaching_outside_the_image_are_clipped():
    obj = _rect(SHAPE, 0, 0, 20, 15)
    cands = candidates_from_masks([obj, _rect(SHAPE, 0, 0, 10, 15)])
    box = np.array([[4, -1, -1, 20, 15]])                # VOC xmin 0 read without clipping
    sel = initial_selection(cands, box)
    assert sel.tolist() == [0]
    labels = labels_from_selection(cands, box, sel)
    assert (labels[obj] == 4).all() and (labels[~obj] == 0).all()
    probs = _one_hot_probs(labels, 5)
    assert candidate_costs(cands, box[0], probs)[0] < 0.05


def test_overlap_rule_smaller_candidate_wins_and_clip_to_box():
    big = _rect(SHAPE, 0, 0, 30, 30)
    small = _rect(SHAPE, 10, 10, 20, 20)
    cands = candidates_from_masks([big, small])
    boxes = np.array([[1, 0, 0, 30, 30], [2, 10, 10, 20, 20]])
    labels = labels_from_selection(cands, boxes, [0, 1])
    assert (labels[small] == 2).all() and (labels[big & ~small] == 1).all() and (labels[~big] == 0).all()
    # the big candidate selected for a box that covers only part of it: clipped to the box by default
    clipped = labels_from_selection(cands, np.array([[1, 0, 0, 15, 30]]), [0])
    assert (clipped[:, :15][big[:, :15]] == 1).all() and (clipped[:, 15:] == 0).all()
    unclipped = labels_from_selection(cands, np.array([[1, 0, 0, 15, 30]]), [0], clip_to_box=False)
    assert (unclipped[big] == 1).all()


def test_min_fit_leaves_an_unfitted_box_to_box_fill_or_255():
    obj = _rect(SHAPE, 10, 8, 30, 28)          # fits box A exactly
    sliver = _rect(SHAPE, 36, 5, 40, 35)       # best candidate for box B [34, 5, 48, 35]: box IoU 4/14
    cands = candidates_from_masks([obj, sliver])
    boxes = np.array([[3, 10, 8, 30, 28], [1, 34, 5, 48, 35]])
    assert best_box_fit(cands, boxes) == pytest.approx([1.0, 4 / 14])
    assert initial_selection(cands, boxes).tolist() == [0, 1]
    sel = initial_selection(cands, boxes, min_fit=0.5)
    assert sel.tolist() == [0, NO_CANDIDATE]
    filled = labels_from_selection(cands, boxes, sel)                       # poor_fit="fill": box fill
    expect = np.zeros(SHAPE, np.uint8)
    expect[obj] = 3
    expect[5:35, 34:48] = 1
    np.testing.assert_array_equal(filled, expect)
    ignored = labels_from_selection(cands, boxes, sel, poor_fit="ignore")
    expect[5:35, 34:48] = 255
    np.testing.assert_array_equal(ignored, expect)
    # the update keeps an unfitted box unfitted whatever the network says
    probs = _one_hot_probs(filled, 4)
    upd, cost = update_selection(cands, boxes, probs, top_k=1, rng=np.random.default_rng(0), min_fit=0.5)
    assert upd.tolist() == [0, NO_CANDIDATE] and np.isnan(cost[1]) and cost[0] < 0.05
    with pytest.raises(ValueError, match="poor_fit"):
        labels_from_selection(cands, boxes, sel, poor_fit="grabcut")


def test_box_rest_ignore_marks_box_pixels_outside_every_candidate():
    big = _rect(SHAPE, 0, 0, 30, 30)
    person = _rect(SHAPE, 12, 12, 18, 20)      # the small box's candidate covers part of its box [10, 10, 20, 20]
    cands = candidates_from_masks([big, person])
    boxes = np.array([[1, 0, 0, 30, 30], [2, 10, 10, 20, 20]])
    labels = labels_from_selection(cands, boxes, [0, 1], box_rest="ignore")
    # candidates win over 255: the big candidate keeps the small box's pixels outside the small candidate
    assert (labels[person] == 2).all() and (labels[big & ~person] == 1).all() and (labels[~big] == 0).all()
    half = _rect(SHAPE, 0, 0, 30, 15)
    cands2 = candidates_from_masks([half])
    only = labels_from_selection(cands2, np.array([[1, 0, 0, 30, 30]]), [0], box_rest="ignore")
    assert (only[half] == 1).all() and (only[15:30, 0:30] == 255).all() and (only[:, 30:] == 0).all()
    assert set(np.unique(labels_from_selection(cands2, np.array([[1, 0, 0, 30, 30]]), [0])).tolist()) == {0, 1}


def test_round_settings_hash_only_what_a_round_depends_on():
    from wsss.config import BoxSupConfig
    from wsss.stages.boxsup import round_settings

    base = BoxSupConfig()
    other_update = dataclasses.replace(base, boxsup_lambda=0.3, top_k=1, boxsup_rounds=5)
    other_initial = dataclasses.replace(base, min_fit=0.6)
    assert round_settings(base, 0, labels=True) == round_settings(other_update, 0, labels=True)
    assert round_settings(base, 1, labels=False) == round_settings(other_update, 1, labels=False)
    assert round_settings(base, 1, labels=True) != round_settings(other_update, 1, labels=True)
    assert round_settings(base, 2, labels=False) != round_settings(other_update, 2, labels=False)
    assert round_settings(base, 0, labels=True) != round_settings(other_initial, 0, labels=True)
    assert round_settings(base, 1, labels=False) != round_settings(other_initial, 1, labels=False)
    assert "boxsup_rounds" not in round_settings(base, 2, labels=True)
    # the round network's training config is part of what a round's training and later labels depend on
    faster = dataclasses.replace(base, train=dataclasses.replace(base.train, output_stride=16))
    assert round_settings(base, 1, labels=False) != round_settings(faster, 1, labels=False)
    assert round_settings(base, 0, labels=True) == round_settings(faster, 0, labels=True)


def test_boxsup_config_nests_the_train_config_and_takes_its_keys_flat():
    from wsss.config import BoxSupConfig, TrainConfig, build_config
    from wsss.errors import ConfigError

    assert isinstance(BoxSupConfig().train, TrainConfig) and BoxSupConfig().train.iterations == 2000
    assert BoxSupConfig().train == dataclasses.replace(TrainConfig(), iterations=2000)
    c = build_config(BoxSupConfig, {"iterations": 5, "optimizer": "adamw", "max_minutes": 3, "top_k": 2})
    assert (c.train.iterations, c.train.optimizer, c.train.max_minutes, c.top_k) == (5, "adamw", 3.0, 2)
    assert c.train.lr == TrainConfig().lr  # the rest keep their defaults
    assert build_config(BoxSupConfig, dataclasses.asdict(c)) == c  # stage.json's nested form reads back
    with pytest.raises(ConfigError, match="unknown key.*'seed'"):
        build_config(BoxSupConfig, {"seed": 3})  # rounds are seeded by --boxsup-seed
    with pytest.raises(ConfigError, match="choose one of sgd, adamw"):
        build_config(BoxSupConfig, {"optimizer": "adam"})


def _one_hot_probs(labels, k, eps=1e-3):
    probs = np.full((k, *labels.shape), eps, np.float32)
    for c in range(k):
        probs[c][labels == c] = 1 - eps * (k - 1)
    return probs


def test_round_with_perfect_network_selects_its_candidate():
    box = np.array([[2, 10, 8, 30, 28]])
    frame = _rect(SHAPE, 10, 8, 30, 28) & ~_rect(SHAPE, 12, 10, 28, 26)  # box IoU 1, but the wrong pixels
    disc = _disc(SHAPE, 20, 18, 9)                                          # the object: box [11, 9, 30, 28]
    blob = _rect(SHAPE, 8, 6, 31, 30)
    cands = candidates_from_masks([frame, blob, disc])
    assert initial_selection(cands, box, tie_tolerance=0).tolist() == [0]  # boxes alone pick the frame
    target = np.zeros(SHAPE, np.uint8)
    target[disc] = 2
    probs = _one_hot_probs(target, 3)                                       # a network predicting the disc
    costs = candidate_costs(cands, box[0], probs, lam=1.0)
    assert costs.argmin() == 2
    assert costs[2] < 1 - box_iou(box[:, 1:], cands.boxes[2:3])[0, 0] + 0.01  # its CE is ~0
    sel, chosen = update_selection(cands, box, probs, lam=1.0, top_k=1, rng=np.random.default_rng(0))
    assert sel.tolist() == [2] and chosen[0] == pytest.approx(costs[2])
    # without the network term the box match alone decides again
    sel0, _ = update_selection(cands, box, probs, lam=0.0, top_k=1, rng=np.random.default_rng(0))
    assert sel0.tolist() == [0]
    # the labels of the round are exactly the disc
    np.testing.assert_array_equal(labels_from_selection(cands, box, sel), target)


def test_keep_margin_moves_a_box_only_for_a_clearly_cheaper_candidate():
    box = np.array([[2, 10, 8, 30, 28]])
    frame = _rect(SHAPE, 10, 8, 30, 28) & ~_rect(SHAPE, 12, 10, 28, 26)
    disc = _disc(SHAPE, 20, 18, 9)
    cands = candidates_from_masks([frame, disc])
    target = np.zeros(SHAPE, np.uint8)
    target[disc] = 2
    probs = _one_hot_probs(target, 3)
    costs = candidate_costs(cands, box[0], probs, lam=1.0)
    gain = costs[0] - costs[1]
    assert gain > 1
    rng = np.random.default_rng(0)
    kept, cost = update_selection(cands, box, probs, top_k=1, rng=rng, previous=[0], margin=gain + 0.01)
    assert kept.tolist() == [0] and cost[0] == pytest.approx(costs[0])
    moved, _ = update_selection(cands, box, probs, top_k=1, rng=rng, previous=[0], margin=gain - 0.01)
    assert moved.tolist() == [1]
    plain, _ = update_selection(cands, box, probs, top_k=1, rng=rng, previous=[0], margin=0.0)
    assert plain.tolist() == [1]


def test_class_agnostic_cost_ignores_which_object_class_the_network_names():
    box = np.array([[2, 10, 8, 30, 28]])
    frame = _rect(SHAPE, 10, 8, 30, 28) & ~_rect(SHAPE, 12, 10, 28, 26)
    disc = _disc(SHAPE, 20, 18, 9)
    cands = candidates_from_masks([frame, disc])
    wrong_class = np.zeros(SHAPE, np.uint8)
    wrong_class[disc] = 1                                   # the network sees the object but calls it class 1
    probs = _one_hot_probs(wrong_class, 3)
    agn = candidate_costs(cands, box[0], probs, lam=1.0, agnostic=True)
    box_term = 1 - box_iou(box[:, 1:], cands.boxes)[0]
    assert agn.argmin() == 1 and agn[1] == pytest.approx(box_term[1], abs=0.01)
    plain = candidate_costs(cands, box[0], probs, lam=1.0)
    assert plain[1] > agn[1] + 1                              # class 2 has ~0 probability on the disc
    sel, _ = update_selection(cands, box, probs, top_k=1, rng=np.random.default_rng(0), agnostic=True)
    assert sel.tolist() == [1]


def test_agreement_kappa_known_values():
    from wsss.label.boxsup import agreement_kappa

    assert agreement_kappa([[60, 0, 5], [40, 0, 0]]) == pytest.approx(0.0)     # all background: chance
    assert agreement_kappa([[60, 0], [0, 40]]) == pytest.approx(1.0)
    assert agreement_kappa([[50, 10], [10, 30]]) == pytest.approx(0.28 / 0.48)
    assert agreement_kappa([[0, 50], [50, 0]]) < 0
    assert agreement_kappa(np.zeros((3, 4))) == 0.0


def test_balanced_cost_resists_a_background_leaning_network():
    disc = _disc(SHAPE, 20, 20, 10)
    ring = disc & ~_disc(SHAPE, 20, 20, 8)                 # same box as the disc, far fewer pixels
    cands = candidates_from_masks([ring, disc])
    x0, y0, x1, y1 = cands.boxes[1]
    box = np.array([[1, x0, y0, x1, y1]])
    assert tuple(cands.boxes[0]) == tuple(cands.boxes[1])
    probs = np.zeros((2, *SHAPE), np.float32)
    probs[1] = np.where(disc, 0.45, 0.3)                   # the object is likelier there, yet background leads
    probs[0] = 1 - probs[1]
    plain, _ = update_selection(cands, box, probs, lam=1.0, top_k=1, rng=np.random.default_rng(0))
    balanced, _ = update_selection(cands, box, probs, lam=1.0, top_k=1, rng=np.random.default_rng(0),
                                   balanced=True)
    assert plain.tolist() == [0] and balanced.tolist() == [1]
    # a candidate with no pixel inside its box costs the most under the balanced rule
    outside = candidates_from_masks([_rect(SHAPE, 45, 30, 50, 40), disc])
    costs = candidate_costs(outside, box[0], probs, balanced=True)
    assert costs[0] > costs[1] + 5


def test_unclipped_cost_counts_candidate_pixels_outside_the_box():
    box = np.array([2, 0, 0, 10, 10])
    inside = _rect(SHAPE, 0, 0, 10, 10)
    spill = _rect(SHAPE, 0, 0, 20, 10)
    cands = candidates_from_masks([inside, spill])
    probs = _one_hot_probs(np.where(inside, 2, 0).astype(np.uint8), 3)
    clipped = candidate_costs(cands, box, probs, lam=1.0)
    unclipped = candidate_costs(cands, box, probs, lam=1.0, clip_to_box=False)
    assert clipped[1] == pytest.approx(0.5, abs=0.01)    # clipped: same CE as `inside`, only the box term differs
    assert unclipped[1] > clipped[1] + 1.0               # the 100 spilled pixels say background: large CE


def test_top_k_draw_is_seeded_reproducible_and_within_top_k():
    costs = np.array([0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.05])
    top3 = {6, 1, 4}
    draws_a = [select_candidates(costs, 3, rng) for rng in [np.random.default_rng(7)] for _ in range(50)]
    rng_b = np.random.default_rng(7)
    draws_b = [select_candidates(costs, 3, rng_b) for _ in range(50)]
    assert draws_a == draws_b
    assert set(draws_a) == top3                          # all three drawn over 50 tries, nothing else
    rng_c = np.random.default_rng(8)
    assert [select_candidates(costs, 3, rng_c) for _ in range(50)] != draws_a
    assert select_candidates(costs, 1, np.random.default_rng(0)) == 6
    # per-image generators: independent of order, reproducible per (seed, round, id)
    a = image_rng(0, 1, "img_a").integers(1 << 30, size=4)
    np.testing.assert_array_equal(a, image_rng(0, 1, "img_a").integers(1 << 30, size=4))
    assert not np.array_equal(a, image_rng(0, 2, "img_a").integers(1 << 30, size=4))
    assert not np.array_equal(a, image_rng(1, 1, "img_a").integers(1 << 30, size=4))
    with pytest.raises(ValueError):
        select_candidates(costs, 0, np.random.default_rng(0))


def test_update_with_top_k_is_reproducible():
    masks = [_rect(SHAPE, 10, 8, 30 - k, 28) for k in range(8)]
    cands = candidates_from_masks(masks)
    boxes = np.array([[1, 10, 8, 30, 28], [1, 10, 8, 25, 28]])
    probs = _one_hot_probs(np.zeros(SHAPE, np.uint8), 2, eps=0.2)
    s1, _ = update_selection(cands, boxes, probs, top_k=3, rng=image_rng(5, 1, "x"))
    s2, _ = update_selection(cands, boxes, probs, top_k=3, rng=image_rng(5, 1, "x"))
    assert s1.tolist() == s2.tolist()
    order = [np.argsort(candidate_costs(cands, b, probs), kind="stable")[:3] for b in boxes]
    assert all(s in o for s, o in zip(s1, order))


def test_generated_candidates_cover_every_object_of_a_synthetic_scene():
    from wsss.datasets import make_demo_scene

    rng = np.random.default_rng(11)
    found = []
    for _ in range(3):
        image, gt, boxes = make_demo_scene(rng, (64, 80))
        cands = generate_candidates(image)
        assert len(cands) > 10 and cands.leaf_maps.shape[1:] == gt.shape
        for cls, x0, y0, x1, y1 in boxes.tolist():
            obj = np.zeros(gt.shape, bool)
            obj[y0:y1, x0:x1] = gt[y0:y1, x0:x1] == cls
            found.append(cands.mask_ious(obj).max())
    assert len(found) >= 3 and min(found) >= 0.7, found


def test_candidate_statistics_match_the_masks_and_round_trip():
    from wsss.datasets import make_demo_scene

    image, gt, _ = make_demo_scene(np.random.default_rng(2), (48, 64))
    cands = generate_candidates(image, scales=(50.0,), colour_spaces=("lab",), max_side=32)
    idx = np.linspace(0, len(cands) - 1, 6).astype(int)
    masks = cands.masks(idx)
    np.testing.assert_array_equal(masks.reshape(len(idx), -1).sum(1), cands.areas[idx])
    for m, k in zip(masks, idx):
        ys, xs = np.nonzero(m)
        assert tuple(cands.boxes[k]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    back = Candidates.from_arrays(cands.to_arrays())
    np.testing.assert_array_equal(back.members, cands.members)
    np.testing.assert_array_equal(back.leaf_maps, cands.leaf_maps)
    np.testing.assert_array_equal(back.boxes, cands.boxes)
    arrays = cands.to_arrays()
    arrays["strategy"] = arrays["strategy"][:-1]
    with pytest.raises(ValueError):
        Candidates.from_arrays(arrays)


def test_bad_inputs_raise():
    cands = candidates_from_masks([_rect(SHAPE, 0, 0, 5, 5)])
    with pytest.raises(ValueError):
        initial_selection(cands, np.array([[1, 5, 5, 5, 9]]))           # no area
    with pytest.raises(ValueError):
        candidate_costs(cands, [1, 0, 0, 5, 5], np.ones((2, 10, 10)))   # probs of another size
    with pytest.raises(ValueError):
        generate_candidates(np.zeros((10, 10), np.uint8))


# ------------------------------------------------------------------------------------------- stages
def test_candidates_stage_writes_npz_sheets_and_initial_labels(demo_root, tmp_path):
    from wsss.config import BoxSupConfig, CandidatesConfig
    from wsss.datasets import open_dataset
    from wsss.folders import StageFolder
    from wsss.label.boxsup import initial_selection, labels_from_selection
    from wsss.stages.candidates import read_candidates, run_candidates

    ds = open_dataset(demo_root, "train")
    config = CandidatesConfig(sheets=2)
    summary = run_candidates("selective", config, ds, tmp_path, workers=2)
    assert summary.ok and summary.done == len(ds.ids)
    stage = tmp_path / "candidates" / "selective"
    folder = StageFolder.open(stage)
    assert sorted(folder.ok_ids) == sorted(ds.ids)
    assert sorted(p.stem for p in (stage / "sheets").glob("*.png")) == ds.ids[:2]
    sample = ds.load(ds.ids[0])
    cands = read_candidates(stage / "candidates" / f"{ds.ids[0]}.npz")
    d = BoxSupConfig()  # the stage's masks are the boxes guide's round 0 with its defaults
    expect = labels_from_selection(cands, sample.boxes,
                                   initial_selection(cands, sample.boxes, tie_tolerance=d.tie_tolerance,
                                                     min_fit=d.min_fit), poor_fit=d.poor_fit, box_rest=d.box_rest)
    np.testing.assert_array_equal(folder.mask(ds.ids[0]), expect)
    assert summary.quality["miou"] > 50  # the best box-matching candidates on the demo shapes
    again = run_candidates("selective", config, ds, tmp_path)
    assert again.done == 0 and again.skipped == len(ds.ids)


def test_read_candidates_refuses_foreign_files(tmp_path):
    from wsss.errors import ImageError, UnsafeFileError
    from wsss.stages.candidates import read_candidates

    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(UnsafeFileError, match="other.npz"):
        read_candidates(tmp_path / "other.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UnsafeFileError, match="bad.npz"):
        read_candidates(tmp_path / "bad.npz")
    with pytest.raises(ImageError, match="wsss candidates"):
        read_candidates(tmp_path / "missing.npz")


def _tiny_boxsup(**kw):
    from wsss.config import BoxSupConfig, build_config

    base = dict(boxsup_rounds=1, model="deeplabv2", backbone="resnet18", iterations=2, batch_size=2, crop_size=32,
                lr=1e-3, top_k=2, device="cpu", balanced_ce=True)
    base.update(kw)
    return build_config(BoxSupConfig, base)  # the round network's training keys go into config.train


@pytest.mark.slow
def test_boxsup_rounds_write_evaluable_folders_and_resume(demo_root, tmp_path):
    from wsss.datasets import open_dataset
    from wsss.folders import StageFolder
    from wsss.io import read_json
    from wsss.stages.boxsup import run_boxes_guide

    ds = open_dataset(demo_root, "train")
    summary, rounds = run_boxes_guide(_tiny_boxsup(val_split="val", predict_scales=(0.5,)), ds, tmp_path, workers=1)
    assert summary.ok and [r["round"] for r in rounds] == [0, 1]
    for name in ("labels/boxes_r0", "labels/boxes_r1", "labels/boxes", "candidates/selective"):
        folder = StageFolder.open(tmp_path / name)
        assert sorted(folder.ok_ids) == sorted(ds.ids), name
        assert read_json(tmp_path / name / "stage.json")["quality"]["miou"] > 0
    assert (tmp_path / "train" / "boxsup_r1" / "checkpoint.pt").exists()
    assert rounds[1]["network_val_miou"] is not None
    final = StageFolder.open(tmp_path / "labels" / "boxes")
    last = StageFolder.open(tmp_path / "labels" / "boxes_r1")
    for i in ds.ids:
        np.testing.assert_array_equal(final.mask(i), last.mask(i))
        values = set(np.unique(final.mask(i)).tolist())
        assert values <= {0} | {int(b[0]) for b in ds.load(i, image=False).boxes}
    # a second run skips every round (same labels, no retraining)
    mtime = (tmp_path / "train" / "boxsup_r1" / "checkpoint.pt").stat().st_mtime
    summary2, rounds2 = run_boxes_guide(_tiny_boxsup(val_split="val", predict_scales=(0.5,)), ds, tmp_path,
                                        workers=1)
    assert summary2.done == 0 and rounds2 == rounds
    assert (tmp_path / "train" / "boxsup_r1" / "checkpoint.pt").stat().st_mtime == mtime
    # round 1's draws are seeded: redoing the round from the same network gives the same labels
    import shutil

    before = {i: last.mask(i) for i in ds.ids}
    shutil.rmtree(tmp_path / "labels" / "boxes_r1")
    run_boxes_guide(_tiny_boxsup(val_split="val", predict_scales=(0.5,)), ds, tmp_path, workers=2)
    redone = StageFolder.open(tmp_path / "labels" / "boxes_r1")
    for i in ds.ids:
        np.testing.assert_array_equal(redone.mask(i), before[i])


@pytest.mark.slow
def test_adding_a_round_or_changing_the_update_reuses_round_one_and_warm_starts(demo_root, tmp_path):
    from wsss.datasets import open_dataset
    from wsss.runtime import load_checkpoint
    from wsss.stages.boxsup import run_boxsup_rounds

    ds = open_dataset(demo_root, "train")
    run_boxsup_rounds(_tiny_boxsup(), ds, tmp_path)
    ckpt1 = tmp_path / "train" / "boxsup_r1" / "checkpoint.pt"
    mtime = ckpt1.stat().st_mtime
    records = run_boxsup_rounds(_tiny_boxsup(boxsup_rounds=2, boxsup_lambda=0.5, keep_margin=0.1), ds, tmp_path)
    assert [r["round"] for r in records] == [0, 1, 2]
    assert ckpt1.stat().st_mtime == mtime                      # round 1's network is not retrained
    meta = load_checkpoint(tmp_path / "train" / "boxsup_r2" / "checkpoint.pt")["meta"]
    assert meta["warm_start_from"] == str(ckpt1)
    assert all(-1 <= r["network_kappa"] <= 1 for r in records[1:])
    assert records[1]["lambda_used"] == pytest.approx(0.5 * max(0.0, records[1]["network_kappa"]), abs=1e-5)
    # --overwrite with only the update rule changed: round 1's training is kept (its hash is unchanged), round 2's
    # labels and network are redone
    ckpt2 = tmp_path / "train" / "boxsup_r2" / "checkpoint.pt"
    mtime2 = ckpt2.stat().st_mtime_ns
    run_boxsup_rounds(_tiny_boxsup(boxsup_rounds=2, boxsup_lambda=0.25, keep_margin=0.1), ds, tmp_path,
                      overwrite=True)
    assert ckpt1.stat().st_mtime == mtime and ckpt2.stat().st_mtime_ns != mtime2
    # the gate at 0 (a network no better than chance) with a keep margin above the tie tolerance: round 0's labels
    from wsss.folders import StageFolder
    from wsss.stages.boxsup import BoxSupRoundJob

    r0 = StageFolder.open(tmp_path / "labels" / "boxes_r0")
    cfg = _tiny_boxsup(keep_margin=0.3, boxsup_lambda=5.0)
    job = BoxSupRoundJob(str(tmp_path / "candidates" / "selective"), cfg, 1, str(ckpt1), "cpu", lam_scale=0.0)
    for i in ds.ids:
        np.testing.assert_array_equal(job(ds.load(i), {}).mask, r0.mask(i))
    # an initial-selection setting changes round 0, so round 1 is trained again
    run_boxsup_rounds(_tiny_boxsup(min_fit=0.2), ds, tmp_path)
    assert ckpt1.stat().st_mtime != mtime


def test_boxsup_bad_config_is_refused(demo_root, tmp_path):
    from wsss.datasets import open_dataset
    from wsss.errors import ConfigError
    from wsss.stages.boxsup import run_boxsup_rounds

    ds = open_dataset(demo_root, "train")
    with pytest.raises(ConfigError, match="--model"):
        run_boxsup_rounds(_tiny_boxsup(model="nope"), ds, tmp_path)
    with pytest.raises(ConfigError, match="--top-k"):
        run_boxsup_rounds(_tiny_boxsup(top_k=0), ds, tmp_path)
    with pytest.raises(ConfigError, match="--predict-scales"):
        run_boxsup_rounds(_tiny_boxsup(predict_scales=(0.0,)), ds, tmp_path)
    with pytest.raises(ConfigError, match="--min-fit"):
        run_boxsup_rounds(_tiny_boxsup(min_fit=1.5), ds, tmp_path)
    with pytest.raises(ConfigError, match="--holdout-split 'val'.*not in the training split"):
        run_boxsup_rounds(_tiny_boxsup(holdout_split="val"), ds, tmp_path)


@pytest.mark.slow
def test_holdout_split_keeps_only_rounds_that_do_not_lose_on_it(demo_root, tmp_path, monkeypatch):
    """Scripted held-out scores: round 1 below round 0 is not kept, so round 2 trains on round 0's labels and, below
    round 0 as well, leaves the guide with round 0's masks; with round 1 best, the guide gets round 1's."""
    import wsss.stages.boxsup as boxsup
    from wsss.datasets import open_dataset
    from wsss.folders import StageFolder
    from wsss.io import read_json

    ds = open_dataset(demo_root, "train")
    scored = []

    def scripted(scores):
        def evaluate(path, dataset, *, workers=2):
            scored.append(sorted(dataset.ids))
            return {"miou": scores[Path(path).name]}
        return evaluate

    holdout = "train[::2]"
    monkeypatch.setattr(boxsup, "evaluate_folder", scripted({"boxes_r0": 50.0, "boxes_r1": 40.0, "boxes_r2": 45.0}))
    summary, rounds = boxsup.run_boxes_guide(_tiny_boxsup(boxsup_rounds=2, holdout_split=holdout), ds, tmp_path)
    assert [(r["holdout_miou"], r["kept"]) for r in rounds] == [(50.0, True), (40.0, False), (45.0, False)]
    assert scored == [sorted(ds.ids[::2])] * 3
    r2_upstream = read_json(tmp_path / "train" / "boxsup_r2" / "stage.json")["inputs"]["upstream"]["labels"]
    assert Path(r2_upstream).name == "boxes_r0"
    info = read_json(tmp_path / "labels" / "boxes" / "boxsup.json")
    assert info["selected_round"] == 0 and info["holdout_split"] == holdout
    final, r0 = StageFolder.open(tmp_path / "labels" / "boxes"), StageFolder.open(tmp_path / "labels" / "boxes_r0")
    for i in ds.ids:
        np.testing.assert_array_equal(final.mask(i), r0.mask(i))

    run = tmp_path / "second"
    monkeypatch.setattr(boxsup, "evaluate_folder", scripted({"boxes_r0": 50.0, "boxes_r1": 60.0, "boxes_r2": 55.0}))
    _, rounds = boxsup.run_boxes_guide(_tiny_boxsup(boxsup_rounds=2, holdout_split=holdout), ds, run)
    assert [r["kept"] for r in rounds] == [True, True, False]
    assert Path(read_json(run / "train" / "boxsup_r2" / "stage.json")["inputs"]["upstream"]["labels"]).name == \
        "boxes_r1"
    final, r1 = StageFolder.open(run / "labels" / "boxes"), StageFolder.open(run / "labels" / "boxes_r1")
    assert read_json(run / "labels" / "boxes" / "boxsup.json")["selected_round"] == 1
    for i in ds.ids:
        np.testing.assert_array_equal(final.mask(i), r1.mask(i))


def test_cli_candidates_command(demo_root, tmp_path):
    from click.testing import CliRunner

    from wsss.cli import main

    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["candidates", "--dataset", str(demo_root), "--split", "val", "--run", str(run),
                                       "--felzenszwalb-scales", "100", "--colour-spaces", "lab", "--sheets", "1"])
    assert result.exit_code == 0, result.output
    stage = run / "candidates" / "selective"
    assert len(list((stage / "candidates").glob("*.npz"))) == 3 and len(list((stage / "sheets").glob("*"))) == 1
    assert "mIoU" in result.output
    bad = CliRunner().invoke(main, ["candidates", "--dataset", str(demo_root), "--split", "val", "--run", str(run),
                                    "--colour-spaces", "xyz", "--overwrite"])
    assert bad.exit_code == 2 and "--colour-spaces" in bad.output


def test_cli_label_guide_boxes_initial_round(demo_root, tmp_path):
    from click.testing import CliRunner

    from wsss.cli import main
    from wsss.folders import StageFolder
    from wsss.io import read_json

    run = tmp_path / "run"
    args = ["label", "--guide", "boxes", "--boxsup-rounds", "0", "--dataset", str(demo_root), "--split", "val",
            "--run", str(run)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rounds = read_json(run / "labels" / "boxes" / "boxsup.json")["rounds"]
    assert [r["round"] for r in rounds] == [0] and rounds[0]["labels_miou"] > 50
    final, r0 = StageFolder.open(run / "labels" / "boxes"), StageFolder.open(run / "labels" / "boxes_r0")
    assert sorted(final.ok_ids) == sorted(r0.ok_ids) and len(r0.ok_ids) == 3
    for i in r0.ok_ids:
        np.testing.assert_array_equal(final.mask(i), r0.mask(i))
    assert (run / "candidates" / "selective" / "manifest.csv").exists()
    wrong = CliRunner().invoke(main, args[:4] + ["--top-k", "0"] + args[4:])
    assert wrong.exit_code == 2 and "--top-k" in wrong.output


def test_boxes_guide_on_another_split_names_the_fix(demo_root, tmp_path):
    from wsss.config import BoxSupConfig
    from wsss.datasets import open_dataset
    from wsss.errors import StageError
    from wsss.stages.boxsup import run_boxsup_rounds

    run_boxsup_rounds(BoxSupConfig(boxsup_rounds=0), open_dataset(demo_root, "val"), tmp_path)
    with pytest.raises(StageError, match="--candidates FOLDER"):
        run_boxsup_rounds(BoxSupConfig(boxsup_rounds=0), open_dataset(demo_root, "train"), tmp_path)


@pytest.mark.realdata
def test_candidates_recall_on_voc_dev_images():
    from conftest import voc_dev

    from wsss.datasets import open_dataset

    ds = open_dataset(voc_dev(), "train")
    best = []
    for image_id in ds.ids[:4]:
        sample = ds.load(image_id)
        cands = generate_candidates(sample.image)
        for cls, x0, y0, x1, y1 in sample.boxes.tolist():
            obj = np.zeros(sample.gt.shape, bool)
            obj[y0:y1, x0:x1] = sample.gt[y0:y1, x0:x1] == cls
            if obj.any():
                best.append(cands.mask_ious(obj).max())
    # 80.6 % of 603 objects have a candidate of IoU >= 0.5 on 300 train images (bench/RESULTS.md)
    assert len(best) >= 4 and np.mean(np.array(best) >= 0.5) >= 0.6, best
