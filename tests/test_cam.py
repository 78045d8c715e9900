"""CAM seeds: classifier, multi-scale CAM, seed-mask rules, sweep, training/resume, the cam stage and its CLI."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from wsss.cli import main
from wsss.config import CamConfig
from wsss.errors import ConfigError, UnsafeFileError
from wsss.io import read_mask, read_scores
from wsss.metrics import confusion_matrix
from wsss.models.classifier import build_classifier
from wsss.seeds.cam import (
    cam_seed_mask,
    fold_batchnorm,
    multiscale_cam,
    prepare_for_inference,
    sweep_confusions,
    threshold_range,
)

torch.set_num_threads(2)

# small, fast training settings for the 64x80 demo fixture
TINY = ["--backbone", "resnet18", "--epochs", "2", "--batch-size", "6", "--crop-size", "48", "--resize-long", "64,80",
        "--lr", "0.001", "--optimizer", "adamw", "--scales", "1.0,0.5"]


def _tiny_model(num_classes=4, seed=0, recam=False):
    torch.manual_seed(seed)
    model = build_classifier(num_classes=num_classes, backbone="resnet18", recam=recam)
    # non-trivial BN statistics so that folding BN is really exercised
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    with torch.no_grad():  # class 1 positive everywhere (features are >= 0); the others mixed, so ReLU matters
        model.classifier.weight[0].abs_()
    return model.eval()


def _direct_cam(model, image, class_ids, scales, flip):
    """CAM straight from the definition: relu(W_k . features), flipped back, upsampled, summed, max-normalised."""
    h, w = image.shape[:2]
    weight = model.classifier.weight[:, :, 0, 0][np.asarray(class_ids) - 1]  # (K', C)
    x = model.normalise(torch.from_numpy(image).permute(2, 0, 1)[None])
    total = torch.zeros((len(class_ids), h, w))
    with torch.no_grad():
        for s in scales:
            xs = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
            for flipped in ([False, True] if flip else [False]):
                feats = model.features(xs.flip(-1) if flipped else xs)[0]  # (C, h', w')
                cam = torch.relu(torch.einsum("kc,chw->khw", weight, feats))
                if flipped:
                    cam = cam.flip(-1)
                total += F.interpolate(cam[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return (total / total.flatten(1).amax(1).clamp_min(1e-5)[:, None, None]).numpy()


# --------------------------------------------------------------------------------------------- classifier
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_classifier_output_stride_16_and_logits_are_gap_of_cam(backbone):
    torch.manual_seed(0)
    model = build_classifier(num_classes=5, backbone=backbone).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        feats = model.features(x)
        assert feats.shape == (2, model.out_channels, 4, 5)
        cam = model.cam(feats)
        # bias-free 1x1 classifier: logits are exactly the spatial mean of the (pre-ReLU) CAM
        torch.testing.assert_close(model(x), cam.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
        # and the CAM is the classifier weights times the features
        direct = torch.einsum("kc,nchw->nkhw", model.classifier.weight[:, :, 0, 0], feats)
        torch.testing.assert_close(cam, direct, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.cam(feats, torch.tensor([3, 1])), direct[:, [3, 1]], rtol=1e-4, atol=1e-5)
    assert model.classifier.bias is None


def test_classifier_forward_backward_finite():
    model = build_classifier(num_classes=3, backbone="resnet18")
    logits = model(torch.randn(2, 3, 64, 64))
    loss = F.multilabel_soft_margin_loss(logits, torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    loss.backward()
    assert logits.shape == (2, 3)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_classifier_rejects_unknown_backbone_and_weights():
    with pytest.raises(ValueError, match="resnet18"):
        build_classifier(num_classes=3, backbone="vgg16")
    with pytest.raises(ConfigError, match="'coco': no such file; give --weights imagenet"):  # one parser (exit 2)
        build_classifier(num_classes=3, backbone="resnet18", weights="coco")


# -------------------------------------------------------------------------------------------- inference
def test_multiscale_cam_equals_direct_computation(rng):
    model = _tiny_model()
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for scales, flip in [((1.0,), False), ((1.0, 0.5, 1.5), True)]:
        expected = _direct_cam(model, image, [1, 3], scales, flip)
        for fast in (dict(channels_last=False), dict(channels_last=True)):
            prepared = prepare_for_inference(model, **fast)
            cams, ids = multiscale_cam(prepared, image, [3, 1], scales=scales, flip=flip, **fast)
            assert ids.tolist() == [1, 3]
            assert cams.shape == (2, 48, 64) and cams.dtype == np.float32
            np.testing.assert_allclose(cams, expected, atol=2e-4)
            assert cams.max(axis=(1, 2))[0] == pytest.approx(1.0) and cams.min() >= 0


def test_bf16_cam_is_close_to_fp32(rng):
    model = prepare_for_inference(_tiny_model())
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    fp32, _ = multiscale_cam(model, image, [2], scales=(1.0,))
    bf16, _ = multiscale_cam(model, image, [2], scales=(1.0,), bf16=True)
    assert np.abs(fp32 - bf16).max() < 0.1


def test_fold_batchnorm_keeps_outputs():
    model = _tiny_model()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # original untouched
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded.features(x), model.features(x), rtol=1e-3, atol=1e-4)


def test_untagged_classes_are_never_computed(rng):
    model = prepare_for_inference(_tiny_model())
    image = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    cams, ids = multiscale_cam(model, image, [4], scales=(1.0,))
    assert ids.tolist() == [4] and cams.shape == (1, 32, 40)
    mask = cam_seed_mask(cams, ids, bg_threshold=0.1, fg_threshold=0.5)
    assert set(np.unique(mask).tolist()) <= {0, 4, 255}
    empty, ids = multiscale_cam(model, image, [], scales=(1.0,))
    assert empty.shape == (0, 32, 40) and ids.size == 0
    assert (cam_seed_mask(empty, ids, bg_threshold=0.1) == 0).all()
    with pytest.raises(ValueError, match="outside"):
        multiscale_cam(model, image, [5], scales=(1.0,))


# -------------------------------------------------------------------------------------------- seed rules
def _known_cams():
    # two classes (ids 2 and 5) over a 1x6 strip
    a = np.array([[0.90, 0.10, 0.40, 0.05, 0.30, 0.60]], np.float32)
    b = np.array([[0.20, 0.80, 0.10, 0.10, 0.70, 0.60]], np.float32)
    return np.stack([a, b]), np.array([2, 5])


def test_seed_mask_three_way_rule():
    cams, ids = _known_cams()
    mask = cam_seed_mask(cams, ids, bg_threshold=0.15, fg_threshold=0.6)
    # peaks: 0.9(2) 0.8(5) 0.4(2) 0.1(5) 0.7(5) 0.6(tie -> first class, 2, but not > 0.6)
    assert mask.tolist() == [[2, 5, 255, 0, 5, 255]]
    assert mask.dtype == np.uint8


def test_seed_mask_dense_rule():
    cams, ids = _known_cams()
    assert cam_seed_mask(cams, ids, bg_threshold=0.35).tolist() == [[2, 5, 2, 0, 5, 2]]
    # a peak exactly at the threshold is background
    assert cam_seed_mask(cams, ids, bg_threshold=0.4).tolist() == [[2, 5, 0, 0, 5, 2]]


def test_seed_mask_errors():
    cams, ids = _known_cams()
    with pytest.raises(ValueError, match="below"):
        cam_seed_mask(cams, ids, bg_threshold=0.5, fg_threshold=0.2)
    with pytest.raises(ValueError, match="class ids"):
        cam_seed_mask(cams, ids[:1], bg_threshold=0.5)


def test_sweep_confusions_match_masks(rng):
    cams = rng.random((2, 20, 30)).astype(np.float32)
    ids = np.array([1, 3])
    gt = rng.integers(0, 4, (20, 30)).astype(np.uint8)
    gt[0, :5] = 255
    thresholds = (0.0, 0.3, 0.75, 1.0)
    got = sweep_confusions(cams, ids, gt, thresholds, 4)
    for k, t in enumerate(thresholds):
        np.testing.assert_array_equal(got[k], confusion_matrix(gt, cam_seed_mask(cams, ids, bg_threshold=t), 4))


def test_threshold_range():
    assert threshold_range("0.1:0.3:0.1") == (0.1, 0.2, 0.3)
    assert threshold_range("0.05, 0.2") == (0.05, 0.2)
    for bad in ("0.3:0.1:0.1", "a:b:c", "", "0:1:0"):
        with pytest.raises(ValueError):
            threshold_range(bad)


# ----------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_train_resume_and_checkpoint_safety(demo_root, tmp_path):
    from wsss.datasets import open_dataset
    from wsss.trainers.cam_classifier import (
        load_classifier,
        read_checkpoint,
        train_classifier,
    )

    data = open_dataset(demo_root, "train")
    config = CamConfig(backbone="resnet18", epochs=2, batch_size=4, crop_size=48, resize_long=(64, 80), lr=1e-3,
                       optimizer="adamw")
    ckpt = train_classifier(data, tmp_path, config)
    state = read_checkpoint(ckpt)
    assert state["complete"] and state["epoch"] == 2 and state["meta"]["num_classes"] == 5
    rows = list(csv.DictReader(open(tmp_path / "train_log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(np.isfinite(float(r["mean_loss"])) for r in rows)
    # a complete checkpoint is reused as is
    mtime = ckpt.stat().st_mtime_ns
    train_classifier(data, tmp_path, config)
    assert ckpt.stat().st_mtime_ns == mtime
    # an interrupted run (after epoch 1; the checkpoint carries the log rows up to it) resumes with epoch 2 only
    state.update(epoch=1, complete=False, log=state["log"][:1])
    torch.save(state, ckpt)
    log_lines = open(tmp_path / "train_log.csv").readlines()
    (tmp_path / "train_log.csv").write_text("".join(log_lines[:2]))
    train_classifier(data, tmp_path, config)
    assert read_checkpoint(ckpt)["epoch"] == 2 and read_checkpoint(ckpt)["complete"]
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "train_log.csv"))] == ["1", "2"]
    # --inference-stride 8: the same weights, dilated: 2x finer maps of a 64x80 input
    own, fine = load_classifier(ckpt), load_classifier(ckpt, output_stride=8)
    for (k, a), (k2, b) in zip(own.state_dict().items(), fine.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 80)
        assert own.features(x).shape[-2:] == (4, 5) and fine.features(x).shape[-2:] == (8, 10)
    # class count mismatch and unsafe files are refused with the file named
    with pytest.raises(ConfigError, match="foreground classes"):
        load_classifier(ckpt, num_classes=20)
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "meta": {}, "obj": CamConfig()}, evil)
    with pytest.raises(UnsafeFileError, match="evil.pt"):
        read_checkpoint(evil)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UnsafeFileError, match="junk.pt"):
        read_checkpoint(junk)


# ----------------------------------------------------------------------------------------------- stage
@pytest.mark.slow
def test_cam_stage_cli_resume_checkpoint_and_sweep(demo_root, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["seeds", "--method", "cam", "--dataset", str(demo_root), "--run", str(run), *TINY]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    stage = run / "seeds" / "cam"
    assert (stage / "classifier.pt").exists() and (stage / "train_log.csv").exists()
    from wsss.datasets import open_dataset

    dataset = open_dataset(demo_root)
    log_rows = list(csv.DictReader(open(stage / "train_log.csv")))
    training = json.loads((stage / "stage.json").read_text())["training"]
    assert training["trained_here"] and training["epochs"] == len(log_rows)
    assert training["images_seen"] == sum(int(r["images"]) for r in log_rows)
    assert training["seconds"] == round(float(log_rows[-1]["train_seconds"]), 1)
    rows = list(csv.DictReader(open(stage / "manifest.csv")))
    assert len(rows) == len(dataset.ids) and all(r["status"] == "ok" for r in rows)
    for image_id in dataset.ids:
        sample = dataset.load(image_id)
        scores, ids = read_scores(stage / "scores" / f"{image_id}.npz")
        assert ids.tolist() == sorted(sample.image_labels)
        assert scores.shape == (len(ids), 64, 80) and scores.max() <= 1.0 + 1e-3 and scores.min() >= 0
        mask = read_mask(stage / "masks" / f"{image_id}.png")
        # absent classes never appear; dense map (no --fg-threshold) has no 255
        assert set(np.unique(mask).tolist()) <= {0, *sample.image_labels}
        np.testing.assert_array_equal(mask, cam_seed_mask(scores, ids, bg_threshold=0.15))
    # re-run: nothing retrained, nothing rewritten
    mtime = (stage / "classifier.pt").stat().st_mtime_ns
    res = runner.invoke(main, args)
    assert res.exit_code == 0 and f"0 written, {len(dataset.ids)} resumed" in res.output
    assert (stage / "classifier.pt").stat().st_mtime_ns == mtime
    # --checkpoint: no training in the new run, seeds with an unsure band; 2 workers cap the workers' torch threads,
    # never this process's (a recipe's later training would run on one thread)
    run2 = tmp_path / "run2"
    threads = torch.get_num_threads()
    res = runner.invoke(main, ["seeds", "--method", "cam", "--dataset", str(demo_root), "--run", str(run2),
                               "--checkpoint", str(stage / "classifier.pt"), "--scales", "1.0,0.5",
                               "--bg-threshold", "0.1", "--fg-threshold", "0.5", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == threads
    assert not (run2 / "seeds" / "cam" / "classifier.pt").exists()
    for image_id in dataset.ids[:4]:
        scores, ids = read_scores(run2 / "seeds" / "cam" / "scores" / f"{image_id}.npz")
        mask = read_mask(run2 / "seeds" / "cam" / "masks" / f"{image_id}.png")
        np.testing.assert_array_equal(mask, cam_seed_mask(scores, ids, bg_threshold=0.1, fg_threshold=0.5))
    # the sweep: one row per threshold, best is the max, and it equals eval of the mask folder at that threshold
    res = runner.invoke(main, ["eval", str(stage), "--dataset", str(demo_root), "--sweep", "0.05:0.25:0.1",
                               "--json"])
    assert res.exit_code == 0, res.output

    sweep = json.loads(res.output)
    assert [r["bg_threshold"] for r in sweep["rows"]] == [0.05, 0.15, 0.25]
    assert sweep["best"]["miou"] == max(r["miou"] for r in sweep["rows"])
    plain = json.loads(runner.invoke(main, ["eval", str(stage), "--dataset", str(demo_root), "--json"]).output)
    assert sweep["rows"][1]["miou"] == pytest.approx(plain["miou"], abs=1e-3)
    res = runner.invoke(main, ["eval", str(stage), "--dataset", str(demo_root), "--sweep"])
    assert res.exit_code == 0 and "best: mIoU" in res.output


def test_cam_stage_errors(demo_root, tmp_path):
    runner = CliRunner()

    def base(name):
        return ["seeds", "--method", "cam", "--dataset", str(demo_root), "--run", str(tmp_path / name)]

    res = runner.invoke(main, [*base("a"), "--bg-threshold", "0.5", "--fg-threshold", "0.2"])
    assert res.exit_code == 2 and "--fg-threshold" in res.output
    res = runner.invoke(main, [*base("b"), "--checkpoint", str(tmp_path / "missing.pt")])
    assert res.exit_code == 2 and "missing.pt" in res.output
    res = runner.invoke(main, [*base("c"), "--scales", "1.0,-1"])
    assert res.exit_code == 2 and "--scales" in res.output
    # sweeping a folder without scores is refused with the fix
    runner.invoke(main, ["seeds", "--method", "threshold", "--dataset", str(demo_root), "--run", str(tmp_path / "t")])
    res = runner.invoke(main, ["eval", str(tmp_path / "t" / "seeds" / "threshold"), "--dataset", str(demo_root),
                               "--sweep"])
    assert res.exit_code == 2 and "scores" in res.output
    res = runner.invoke(main, ["eval", str(tmp_path / "t" / "seeds" / "threshold"), "--dataset", str(demo_root),
                               "--sweep", "0.5:0.1:0.1"])
    assert res.exit_code == 2 and "--sweep" in res.output


# ------------------------------------------------------------------------------------------ quality bar
@pytest.mark.slow
def test_demo_cam_seeds_beat_threshold_seeds(tmp_path):
    """The demo recipe's CAM settings (epoch-bound, no time cap) on the demo set that ``wsss demo`` generates.

    Measured (bench/RESULTS.md, issue 4): CAM mIoU 66.08 here (2 threads) at the demo's bg_threshold 0.55, 65-69
    over other training seeds and thread counts, vs threshold seeds 44.39 on the same 60 images; the training is
    seeded and deterministic on a given thread count. The bar (>= 58 and >= threshold + 12) leaves room for that
    spread.
    """
    import dataclasses

    from wsss.config import ThresholdConfig
    from wsss.datasets import make_demo_data, open_dataset
    from wsss.stages.pipeline import demo_step_config
    from wsss.stages.runner import run_method_stage
    from wsss.stages.seeds import SEED_METHODS

    dataset = open_dataset(make_demo_data(tmp_path / "data", 60), "trainval")
    config = dataclasses.replace(demo_step_config("cam"), max_minutes=None)
    cam = run_method_stage("seeds", "cam", SEED_METHODS["cam"], config, dataset, tmp_path)
    threshold = run_method_stage("seeds", "threshold", SEED_METHODS["threshold"], ThresholdConfig(), dataset, tmp_path)
    assert not cam.failed and not threshold.failed
    assert cam.quality["miou"] >= 58.0
    assert cam.quality["miou"] >= threshold.quality["miou"] + 12.0
    # absent classes never appear in any CAM seed mask
    from wsss.folders import StageFolder

    folder = StageFolder.open(cam.stage_dir)
    for image_id in dataset.ids:
        labels = set(dataset.load(image_id, image=False, gt=True).image_labels)
        assert set(np.unique(folder.mask(image_id)).tolist()) <= {0} | labels


def test_cam_precision_options_use_the_train_stage_words_and_old_keys_still_read():
    from wsss.config import TrainConfig, build_config

    assert CamConfig().bf16 == TrainConfig().bf16 == "auto"
    assert dataclasses.fields(CamConfig)[[f.name for f in dataclasses.fields(CamConfig)].index("bf16")].metadata[
        "choices"] == ("auto", "on", "off")
    # recipes / stage.json files written with the old vocabulary: precision fp32|bf16 and a boolean channels_last
    old = build_config(CamConfig, {"precision": "fp32", "channels_last": False})
    assert (old.bf16, old.channels_last) == ("off", "off")
    assert build_config(CamConfig, {"precision": "bf16", "channels_last": True}) == CamConfig(bf16="on",
                                                                                            channels_last="on")
    assert build_config(TrainConfig, {"bf16": True}).bf16 == "on"
    with pytest.raises(ConfigError, match="choose one of auto, on, off"):
        build_config(CamConfig, {"precision": "fp16"})


# ------------------------------------------------------------------------------------- scale equivariance
def test_equivariance_loss_counts_tagged_classes_only():
    from wsss.models.classifier import equivariance_loss

    target = torch.tensor([[1.0, 0.0, 0.0]])
    logits = torch.zeros(1, 3)  # soft-margin loss of a zero logit: log 2 for every class
    small = torch.zeros(1, 3, 2, 2)
    resized = small.clone()
    resized[0, 0] = 0.5  # the tagged class disagrees by 0.5 everywhere
    resized[0, 1] = 1.0  # an untagged class: not counted
    loss = equivariance_loss(2.0)((logits, logits, resized, small), target)
    assert loss.item() == pytest.approx(np.log(2.0) + 2.0 * 0.5, abs=1e-6)
    assert equivariance_loss(2.0)((logits, logits, small, small), target).item() == pytest.approx(np.log(2.0))


def test_equivariant_training_view_is_the_classifier_at_two_scales():
    from wsss.models.classifier import ScaleEquivariantTraining

    model = _tiny_model()
    view = ScaleEquivariantTraining(model, 0.5)
    assert list(view.state_dict()) == list(model.state_dict())  # checkpoints keep the classifier's keys
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits, logits_small, resized, cams_small = view(x)
        assert torch.allclose(logits, model(x), atol=1e-5)
        xs = F.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False)
        assert torch.allclose(logits_small, model(xs), atol=1e-5)
        cam = torch.relu(model.cam(model.features(xs)))
        assert torch.allclose(cams_small, cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-5), atol=1e-5)
        assert resized.shape == cams_small.shape == (2, 4, 2, 3)
        assert float(resized.amax()) <= 1.0 and float(resized.amin()) >= 0.0
    with pytest.raises(ValueError, match="scale"):
        ScaleEquivariantTraining(model, 1.5)


def test_training_views_keep_the_checkpoint_format(demo_root, tmp_path):
    from wsss.datasets import open_dataset
    from wsss.trainers.cam_classifier import load_classifier, train_classifier

    data = open_dataset(demo_root, "train")
    base = dict(backbone="resnet18", epochs=1, batch_size=4, crop_size=48, resize_long=(64, 80), lr=1e-3,
                optimizer="adamw")
    plain = load_classifier(train_classifier(data, tmp_path / "plain", CamConfig(**base)))
    for name, view in (("seam", dict(equivariance=1.0)), ("mix", dict(cutmix=1.0))):
        trained = load_classifier(train_classifier(data, tmp_path / name, CamConfig(**base, **view)))
        assert list(plain.state_dict()) == list(trained.state_dict()), name
        # same seed, same batches: only the view and its loss differ, and they moved the weights
        assert not torch.equal(plain.classifier.weight, trained.classifier.weight), name
    with pytest.raises(ConfigError, match="equivariance"):
        train_classifier(data, tmp_path / "bad", CamConfig(**base, equivariance=1.0, equivariance_scale=1.0))
    with pytest.raises(ConfigError, match="cutmix"):
        train_classifier(data, tmp_path / "bad", CamConfig(**base, cutmix=2.0))
    with pytest.raises(ConfigError, match="equivariance"):
        train_classifier(data, tmp_path / "both", CamConfig(**base, cutmix=0.5, equivariance=1.0))

# ------------------------------------------------------------------------------------------------ cutmix
def test_cutmix_pastes_the_box_and_mixes_tags_by_its_area():
    from wsss.models.classifier import CutMixTraining, cutmix_loss

    x = torch.zeros(2, 1, 10, 10)
    x[1] = 1.0
    perm = torch.tensor([1, 0])
    torch.manual_seed(3)
    mixed, lam = CutMixTraining.mix(x, perm, 0.75)
    pasted = mixed[0, 0] == 1.0  # image 0 got a box of image 1's ones, image 1 the same box of zeros
    assert torch.equal(pasted, mixed[1, 0] == 0.0)
    ys, xs = torch.nonzero(pasted, as_tuple=True)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert int(pasted.sum()) == int(box) > 0  # one rectangle
    assert lam == pytest.approx(1.0 - int(box) / 100.0)
    assert int(box) <= 25  # at most the (1 - 0.75) of the image asked for, less where clipped at the border
    # targets: own tags weigh lam, the pasted image's 1 - lam, a class in both stays 1
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    got = cutmix_loss((logits, perm, torch.tensor(0.8)), target)
    mixed_t = torch.tensor([[0.8, 0.2, 1.0], [0.2, 0.8, 1.0]])
    assert got.item() == pytest.approx(F.multilabel_soft_margin_loss(logits, mixed_t).item(), abs=1e-6)


def test_cutmix_view_is_the_classifier_when_it_does_not_mix():
    from wsss.models.classifier import CutMixTraining

    model = _tiny_model()
    x = torch.randn(3, 3, 32, 32)
    view = CutMixTraining(model, 0.0)
    assert list(view.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        logits, perm, lam = view.train()(x)
        assert torch.equal(perm, torch.arange(3)) and lam.item() == 1.0
        assert torch.allclose(logits, model(x), atol=1e-6)
        view.prob = 1.0
        _, perm, lam = view.eval()(x)  # never mixes outside training
        assert torch.equal(perm, torch.arange(3)) and lam.item() == 1.0
        torch.manual_seed(0)
        _, perm, lam = view.train()(x)
        assert sorted(perm.tolist()) == [0, 1, 2] and 0.0 <= lam.item() <= 1.0
    with pytest.raises(ValueError, match="probability"):
        CutMixTraining(model, 1.5)


# ------------------------------------------------------------------------------------------------- ReCAM
def test_recam_view_pools_the_features_under_each_cam_and_cams_read_both_weights():
    from wsss.models.classifier import ReCAMTraining

    model = _tiny_model(recam=True)
    view = ReCAMTraining(model)
    assert list(view.state_dict()) == list(model.state_dict()) and "recam.weight" in model.state_dict()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits, class_logits = view(x)
        feats = model.features(x)  # (2, C, 4, 6)
        w, w2 = model.classifier.weight[:, :, 0, 0], model.recam.weight[:, :, 0, 0]  # (4, C) each
        assert torch.allclose(logits, feats.mean(dim=(2, 3)) @ w.t(), atol=1e-5)
        for n in range(2):
            for k in range(4):
                cam = torch.relu(torch.einsum("c,chw->hw", w[k], feats[n]))
                cam = cam / (cam.max() + 1e-5)
                pooled = (cam[None] * feats[n]).mean(dim=(1, 2))  # (C,)
                assert torch.allclose(class_logits[n, k], w2 @ pooled, atol=1e-4)
        # the CAMs of a ReCAM classifier read W' * W (element-wise), ReCAM's inference
        want = torch.einsum("kc,nchw->nkhw", w * w2, feats)
        assert torch.allclose(model.cam(feats), want, atol=1e-4)
        assert torch.allclose(model.cam(feats, torch.tensor([2])), want[:, 2:3], atol=1e-4)
    with pytest.raises(ValueError, match="recam=True"):
        ReCAMTraining(_tiny_model())


def test_recam_loss_is_the_tagged_rows_cross_entropy_per_image():
    from wsss.models.classifier import recam_loss

    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 2.0, -1.0]])
    rows = torch.tensor([[[3.0, 0.0, 1.0], [9.0, 9.0, 9.0], [0.0, 1.0, 2.0]],
                         [[5.0, 5.0, 5.0], [1.0, 2.0, 0.0], [7.0, 0.0, 0.0]]])
    got = recam_loss(0.5)((logits, rows), target).item()

    def ce(row, k):
        return float(-torch.log_softmax(row, 0)[k])

    softmax_term = (0.5 * (ce(rows[0, 0], 0) + ce(rows[0, 2], 2)) + ce(rows[1, 1], 1)) / 2  # untagged rows: none
    want = F.multilabel_soft_margin_loss(logits, target).item() + 0.5 * softmax_term
    assert got == pytest.approx(want, abs=1e-5)
    # an image without tags adds nothing to the softmax term but still counts in the batch mean
    none = torch.zeros(1, 3)
    both = recam_loss(0.5)((torch.cat([logits, torch.zeros(1, 3)]), torch.cat([rows, rows[:1]])),
                           torch.cat([target, none])).item()
    bce = F.multilabel_soft_margin_loss(torch.cat([logits, torch.zeros(1, 3)]), torch.cat([target, none])).item()
    assert both == pytest.approx(bce + 0.5 * softmax_term * 2 / 3, abs=1e-5)


@pytest.mark.slow
def test_recam_fine_tunes_a_classifier_into_the_stage_and_the_walk_reads_it(demo_root, tmp_path):
    from wsss.datasets import open_dataset
    from wsss.io import read_json
    from wsss.stages.refine import _input_classifier
    from wsss.folders import StageFolder
    from wsss.trainers.cam_classifier import load_classifier, read_checkpoint, train_classifier, train_recam

    data = open_dataset(demo_root, "train")
    base = dict(backbone="resnet18", epochs=1, batch_size=4, crop_size=48, resize_long=(64, 80), lr=1e-3,
                optimizer="adamw")
    plain_path = train_classifier(data, tmp_path / "plain", CamConfig(**base))
    recam_path = train_recam(data, tmp_path / "recam", CamConfig(**base, recam_epochs=2), plain_path)
    state = read_checkpoint(recam_path)
    assert recam_path.name == "recam.pt" and state["complete"] and state["epoch"] == 2 and state["meta"]["recam"]
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "recam" / "recam_log.csv"))] == ["1", "2"]
    plain, tuned = load_classifier(plain_path), load_classifier(recam_path)
    assert plain.recam is None and tuned.recam is not None
    assert list(tuned.state_dict()) == list(plain.state_dict()) + ["recam.weight"]
    assert not torch.equal(plain.classifier.weight, tuned.classifier.weight)  # W was fine-tuned, not only W'
    mtime = recam_path.stat().st_mtime_ns  # complete: reused as is
    train_recam(data, tmp_path / "recam", CamConfig(**base, recam_epochs=2), plain_path)
    assert recam_path.stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="recam-weight"):
        train_recam(data, tmp_path / "bad", CamConfig(**base, recam_epochs=1, recam_weight=0.0), plain_path)

    # the stage: --checkpoint + --recam-epochs fine-tunes into the stage folder; the walk finds recam.pt there
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["seeds", "--method", "cam", "--dataset", str(demo_root), "--run", str(run), *TINY,
                                    "--checkpoint", str(plain_path), "--recam-epochs", "1"])
    assert res.exit_code == 0, res.output
    stage = run / "seeds" / "cam"
    info = read_json(stage / "stage.json")["training"]
    assert info["trained_here"] is False and info["recam"]["epochs"] == 1 and info["recam"]["log"] == "recam_log.csv"
    assert (stage / "recam.pt").is_file() and not (stage / "classifier.pt").exists()
    assert _input_classifier(StageFolder(stage)) == str(stage / "recam.pt")
    image_id = data.ids[0]
    tags = data.load(image_id).image_labels
    scores, class_ids = read_scores(stage / "scores" / f"{image_id}.npz")
    want, want_ids = multiscale_cam(prepare_for_inference(load_classifier(stage / "recam.pt")),
                                    np.asarray(data.load(image_id).image), tags, scales=(1.0, 0.5))
    assert list(class_ids) == list(want_ids)
    assert np.allclose(scores, want, atol=2e-3)  # the stored CAMs are the fine-tuned classifier's (float16 kept)
