"""The ImageNet prior of CAM seeds: the groups file, group probabilities, prior maps, the fusion and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from test_cam import TINY

from wsss.cli import main
from wsss.conventions import builtin_classes, imagenet_groups
from wsss.datasets import open_dataset
from wsss.errors import ConfigError
from wsss.io import read_mask, read_scores
from wsss.seeds.cam import cam_seed_mask
from wsss.seeds.imagenet_prior import ImageNetPrior, fuse_prior, group_probabilities, prior_maps

torch.set_num_threads(2)


def test_shipped_groups_name_voc_classes_by_their_imagenet_kinds():
    voc = builtin_classes("voc")
    groups = imagenet_groups(voc)
    assert groups[voc.index("bottle")] == (440, 720, 737, 898, 907)  # beer, pill, pop, water, wine bottle
    assert groups[voc.index("dog")] == tuple(range(151, 269))         # the 118 dog breeds
    assert groups[voc.index("sofa")] == (831,)                        # studio couch
    assert voc.index("person") not in groups and 0 not in groups      # ImageNet has no person class
    assert len(groups) == 19


def test_groups_file_ranges_skipped_classes_and_errors(tmp_path):
    path = tmp_path / "groups.yaml"
    path.write_text("disc: [golf ball, '2-4']\nzebra_crossing: [zebra]\n")
    assert imagenet_groups(("background", "disc", "ring"), path) == {1: (2, 3, 4, 574)}
    path.write_text("disc: [golf bal]\n")
    with pytest.raises(ConfigError, match="golf bal"):
        imagenet_groups(("background", "disc"), path)
    path.write_text("disc: ['990-1005']\n")
    with pytest.raises(ConfigError, match="outside"):
        imagenet_groups(("background", "disc"), path)
    with pytest.raises(ConfigError, match="missing.yaml"):
        imagenet_groups(("background", "disc"), tmp_path / "missing.yaml")


def test_group_probabilities_are_softmax_sums():
    logits = torch.zeros(1, 1000, 2, 3)
    logits[0, 0, 1, 2] = math.log(1000.0)
    probs = group_probabilities(logits, [(0, 1), (5,)])
    assert probs.shape == (1, 2, 2, 3)
    assert probs[0, 0, 1, 2].item() == pytest.approx(1001 / 1999, rel=1e-4)
    assert probs[0, 1, 1, 2].item() == pytest.approx(1 / 1999, rel=1e-4)
    assert probs[0, 0, 0, 0].item() == pytest.approx(2 / 1000, rel=1e-4)


def test_fuse_prior_exact_values():
    cams = np.array([[[0.5, 1.0]], [[1.0, 0.2]]], np.float32)
    prior = np.array([[[1.0, 0.0]], [[0.0, 0.0]]], np.float32)
    fused = fuse_prior(cams, prior, np.array([True, False]), 0.5)
    np.testing.assert_allclose(fused[0], [[1.0, 0.5 / 0.75]], rtol=1e-6)  # (0.75, 0.5) / 0.75
    np.testing.assert_array_equal(fused[1], cams[1])                         # no group: unchanged
    np.testing.assert_array_equal(fuse_prior(cams, prior, np.array([True, False]), 0.0), cams)
    with pytest.raises(ValueError, match="0..1"):
        fuse_prior(cams, prior, np.array([True, False]), 1.5)


class _RedPrior:
    """Stand-in for :class:`ImageNetPrior`: ImageNet class 7's logit is 10 x the red channel (0..1), all others 0."""

    groups = {2: (7,)}
    weight = torch.zeros(1)

    def logits(self, x):
        out = torch.zeros(x.shape[0], 1000, *x.shape[2:])
        out[:, 7] = 10 * x[:, 0] / 255.0
        return out


def test_prior_maps_follow_the_content_through_flip_and_normalise_to_one():
    image = np.zeros((4, 6, 3), np.uint8)
    image[:, :2, 0] = 255   # red on the left only: a wrong flip would put it on the right
    image[:, 2:4, 0] = 128
    maps, has = prior_maps(_RedPrior(), image, [1, 2], scales=(1.0,), flip=True)
    assert has.tolist() == [False, True]
    assert np.all(maps[0] == 0)
    p = lambda r: math.exp(10 * r) / (math.exp(10 * r) + 999)  # noqa: E731
    expected = np.array([p(1.0)] * 2 + [p(128 / 255)] * 2 + [p(0.0)] * 2) / p(1.0)
    np.testing.assert_allclose(maps[1], np.broadcast_to(expected, (4, 6)), rtol=1e-4)


def test_lite0_prior_is_the_wheels_imagenet_classifier_at_each_location(rng):
    """The global average of the per-location logits is the ImageNet classifier's own output (it is linear)."""
    from wsss.models.backbones import build_backbone, imagenet_head

    prior = ImageNetPrior({1: (440,)}, backbone="efficientnet_lite0")
    x = torch.from_numpy(rng.integers(0, 256, (1, 3, 64, 96)).astype(np.float32))
    backbone = build_backbone("efficientnet_lite0", weights="imagenet", output_stride=16).eval()
    with torch.no_grad():
        reference = imagenet_head("efficientnet_lite0")(backbone((x / 255.0 - 0.5) / 0.5)[-1].mean(dim=(2, 3)))
        pooled = prior.logits(x).mean(dim=(2, 3))
    torch.testing.assert_close(pooled, reference, rtol=1e-3, atol=1e-3)


def test_cam_stage_with_the_prior_fuses_the_stored_cams(demo_root, tmp_path):
    runner = CliRunner()
    plain = tmp_path / "plain"
    res = runner.invoke(main, ["seeds", "--method", "cam", "--dataset", str(demo_root), "--run", str(plain), *TINY])
    assert res.exit_code == 0, res.output
    checkpoint = plain / "seeds" / "cam" / "classifier.pt"
    groups = tmp_path / "groups.yaml"
    groups.write_text("disc: [golf ball, ping-pong ball]\nring: [bagel]\n")
    fused_run = tmp_path / "fused"
    args = ["seeds", "--method", "cam", "--dataset", str(demo_root), "--checkpoint", str(checkpoint),
            "--scales", "1.0,0.5", "--imagenet-groups", str(groups)]
    res = runner.invoke(main, [*args, "--run", str(fused_run), "--imagenet-prior", "0.5"])
    assert res.exit_code == 0, res.output
    dataset = open_dataset(demo_root)
    prior = ImageNetPrior(imagenet_groups(dataset.classes, groups))
    checked = 0
    for image_id in dataset.ids[:6]:
        sample = dataset.load(image_id)
        cams, ids = read_scores(plain / "seeds" / "cam" / "scores" / f"{image_id}.npz")
        fused, fused_ids = read_scores(fused_run / "seeds" / "cam" / "scores" / f"{image_id}.npz")
        assert fused_ids.tolist() == ids.tolist()
        maps, has = prior_maps(prior, sample.image, ids)
        np.testing.assert_allclose(fused, fuse_prior(cams, maps, has, 0.5), atol=2e-3)
        np.testing.assert_array_equal(fused[~has], cams[~has])     # square, triangle, cross: no group
        mask = read_mask(fused_run / "seeds" / "cam" / "masks" / f"{image_id}.png")
        np.testing.assert_array_equal(mask, cam_seed_mask(fused, fused_ids, bg_threshold=0.15))
        checked += int(has.any())
    assert checked >= 2
    # errors: a weight outside 0..1; a dataset none of whose classes has a group (the demo's, shipped file)
    res = runner.invoke(main, [*args, "--run", str(tmp_path / "e1"), "--imagenet-prior", "1.5"])
    assert res.exit_code == 2 and "--imagenet-prior" in res.output
    res = runner.invoke(main, ["seeds", "--method", "cam", "--dataset", str(demo_root), "--checkpoint",
                               str(checkpoint), "--run", str(tmp_path / "e2"), "--imagenet-prior", "0.5"])
    assert res.exit_code == 2 and "--imagenet-groups" in res.output
