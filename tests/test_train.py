"""Training loop, exact resume, DDP on CPU (gloo), wsss train / predict."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from wsss.cli import main
from wsss.config import PredictConfig, TrainConfig
from wsss.datasets import open_dataset
from wsss.errors import ConfigError, StageError, UnsafeFileError
from wsss.io import read_csv, read_json, read_mask
from wsss.pairs import MaskPairs, ResumableSampler, augment_pair
from wsss.runtime import load_checkpoint, poly_lr
from wsss.stages.train import run_train

TINY = dict(backbone="resnet18", batch_size=2, crop_size=32, checkpoint_every=2, loader_workers=0)


def test_poly_lr():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 100, 100) == 0.0


def test_augment_pair_pads_with_ignore_and_flips(rng):
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :10] = 255
    mask = np.zeros((10, 20), np.uint8)
    mask[:, :10] = 1
    img, msk = augment_pair(image, mask, np.random.default_rng(1), crop_size=24, scale_range=(1.0, 1.0), flip=False)
    assert img.shape == (3, 24, 24) and img.dtype == np.float32 and msk.dtype == np.int64
    assert (msk[10:] == 255).all() and (msk[:, 20:] == 255).all()  # padding is ignored
    assert (msk[:10, :10] == 1).all() and (msk[:10, 10:20] == 0).all()
    assert np.allclose(img[:, 10:], 0.0)  # padded with the mean (0 after normalisation)
    flipped = [augment_pair(image, mask, np.random.default_rng(s), crop_size=24, scale_range=(1.0, 1.0),
                            flip=True)[1] for s in range(8)]
    mirrored = [np.array_equal(m, msk[:, ::-1]) for m in flipped]
    assert any(mirrored) and not all(mirrored)  # a fair coin per sample
    assert all(f or np.array_equal(m, msk) for f, m in zip(mirrored, flipped))
    a = augment_pair(image, mask, np.random.default_rng(5), crop_size=8, scale_range=(0.5, 1.5))
    b = augment_pair(image, mask, np.random.default_rng(5), crop_size=8, scale_range=(0.5, 1.5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_resumable_sampler_is_the_tail_and_shards():
    full = list(ResumableSampler(10, batch_size=3, iterations=8, seed=4))
    tail = list(ResumableSampler(10, batch_size=3, iterations=8, start=5, seed=4))
    assert tail == full[15:]
    assert sorted(i for i, _ in full[:10]) == list(range(10))  # first epoch is a permutation
    keys = [k for _, k in full]
    assert len(set(keys)) == len(keys)
    r0 = [i for i, _ in ResumableSampler(10, batch_size=5, iterations=1, rank=0, world_size=2)]
    r1 = [i for i, _ in ResumableSampler(10, batch_size=5, iterations=1, rank=1, world_size=2)]
    assert sorted(r0 + r1) == list(range(10))


def test_repeat_factors_known_values_and_the_epoch_list():
    from wsss.pairs import repeat_factors, repeated_indices

    # 10 images: class 1 in 5 (f 0.5), class 2 in 1 (f 0.1), class 3 in 4 (f 0.4); t 0.4
    presence = [frozenset({1})] * 4 + [frozenset({1, 2})] + [frozenset({3})] * 4 + [frozenset()]
    r = repeat_factors(presence, 0.4)
    # r_1 = max(1, sqrt(0.8)) = 1, r_2 = sqrt(4) = 2, r_3 = sqrt(1) = 1; the background-only image: 1
    np.testing.assert_allclose(r, [1, 1, 1, 1, 2, 1, 1, 1, 1, 1])
    assert repeated_indices(r) == [0, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9]
    np.testing.assert_allclose(repeat_factors(presence, 0.0), np.ones(10))
    # a fractional factor adds the image once more with that probability, drawn once from the seed
    draws = [repeated_indices(np.array([1.0, 2.25]), seed=s).count(1) for s in range(400)]
    assert set(draws) == {2, 3} and 0.18 < (np.array(draws) == 3).mean() < 0.32
    assert repeated_indices(np.array([1.0, 2.25]), seed=3) == repeated_indices(np.array([1.0, 2.25]), seed=3)


def test_resumable_sampler_over_a_repeated_epoch_list():
    epoch = [0, 1, 2, 2, 2, 3]
    full = list(ResumableSampler(4, batch_size=2, iterations=9, seed=1, epoch_indices=epoch))
    assert list(ResumableSampler(4, batch_size=2, iterations=9, start=4, seed=1, epoch_indices=epoch)) == full[8:]
    for e in range(3):  # each epoch holds index 2 three times, the others once
        assert sorted(i for i, _ in full[6 * e:6 * e + 6]) == epoch
    with pytest.raises(ValueError, match="0..3"):
        ResumableSampler(4, batch_size=2, iterations=1, epoch_indices=[0, 4])


def _weights(checkpoint):
    return load_checkpoint(checkpoint)["model"]


@pytest.mark.slow
def test_resume_gives_identical_weights(demo_root, tmp_path):
    """N iterations in one go == N/2, stop, resume to N (same data order, crops, momentum, LR schedule)."""
    torch.set_num_threads(2)
    ds = open_dataset(demo_root, "train")
    config = TrainConfig(iterations=4, **TINY)
    one = run_train("deeplabv2", config, ds, tmp_path / "one", progress=False)
    assert one.iterations == 4 and not one.stopped_early
    half = run_train("deeplabv2", config, ds, tmp_path / "two", stop_at=2, progress=False)
    assert half.stopped_early and half.iterations == 2
    assert read_json(tmp_path / "two/train/deeplabv2/stage.json")["status"] == "stopped"
    rest = run_train("deeplabv2", config, ds, tmp_path / "two", progress=False)
    assert rest.start_iteration == 2 and rest.iterations == 4
    a, b = _weights(one.checkpoint), _weights(rest.checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    init = run_train("deeplabv2", TrainConfig(iterations=1, lr=0.0, **TINY), ds, tmp_path / "zero", progress=False)
    w0 = _weights(init.checkpoint)["head.branches.0.weight"]
    assert not torch.equal(w0, a["head.branches.0.weight"])  # training changed the weights
    log = read_csv(tmp_path / "two/train/deeplabv2/log.csv")
    assert [int(r["iteration"]) for r in log] == [2, 4]
    # a finished run is not retrained; another config is refused
    again = run_train("deeplabv2", config, ds, tmp_path / "two", progress=False)
    assert again.start_iteration == 4 and again.iterations == 4
    with pytest.raises(StageError, match="another config"):
        run_train("deeplabv2", TrainConfig(iterations=6, **TINY), ds, tmp_path / "two", progress=False)


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from pathlib import Path
    from wsss.config import TrainConfig
    from wsss.datasets import open_dataset
    from wsss.stages.train import run_train
    import wsss.trainers.segmentation as T

    captured = {}
    original = T.train_model
    def spy(model, *a, **k):
        result = original(model, *a, **k)
        captured["state"] = {n: t.detach().clone() for n, t in model.state_dict().items()}
        return result
    import wsss.stages.train as S
    T.train_model = spy
    torch.set_num_threads(1)
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    config = TrainConfig(iterations=3, backbone="resnet18", batch_size=2, crop_size=32, loader_workers=0)
    run_train("deeplabv2", config, open_dataset(root, "train"), out, val_dataset=open_dataset(root, "val"),
              progress=False)
    torch.save(captured["state"], out / f"rank{os.environ['RANK']}.pt")
""")


@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights(demo_root, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(script), str(demo_root), str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "run/rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "run/rank1.pt", weights_only=True)
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    info = read_json(tmp_path / "run/train/deeplabv2/stage.json")
    assert info["training"]["world_size"] == 2 and info["training"]["iterations_done"] == 3
    assert info["quality"]["images"] == 3  # val split of the 12-image demo set, sharded and summed
    ckpt = _weights(tmp_path / "run/train/deeplabv2/checkpoint.pt")
    for key in r0:
        assert torch.equal(ckpt[key], r0[key]), key
    # a per-image stage under torchrun (python -m wsss): images sharded by rank, one stage folder. ("--" keeps
    # torchrun's argparse from reading wsss's --run as an abbreviation of its own --run-path.)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "wsss",
           "--", "predict", "--checkpoint", str(tmp_path / "run/train/deeplabv2"), "--dataset", str(demo_root),
           "--split", "trainval", "--run", str(tmp_path / "run"), "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pred = tmp_path / "run/predictions/deeplabv2"
    rows = read_csv(pred / "manifest.csv")
    assert [r["image_id"] for r in rows] == open_dataset(demo_root, "trainval").ids
    assert all(r["status"] == "ok" for r in rows) and len(list((pred / "masks").glob("*.png"))) == 12
    info = read_json(pred / "stage.json")
    assert info["world_size"] == 2 and info["quality"]["images"] == 12


@pytest.mark.slow
def test_cli_train_on_a_stage_then_predict(demo_root, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(main, ["seeds", "--method", "threshold", "--dataset", str(demo_root), "--split", "train",
                               "--run", str(run)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["train", "--model", "deeplabv2", "--labels", "seeds/threshold", "--dataset",
                               str(demo_root), "--run", str(run), "--backbone", "resnet18", "--iterations", "2",
                               "--batch-size", "2", "--crop-size", "32", "--loader-workers", "0", "--val-split",
                               "val", "--no-flip"])
    assert res.exit_code == 0, res.output
    assert "complete at iteration 2" in res.output and "val mIoU" in res.output
    info = read_json(run / "train/deeplabv2/stage.json")
    assert info["config"]["flip"] is False and info["training"]["labels"].endswith("seeds/threshold")
    assert info["training"]["train_images"] == 9
    res = runner.invoke(main, ["predict", "--checkpoint", str(run / "train/deeplabv2"), "--dataset",
                               str(demo_root), "--split", "val", "--run", str(run), "--scales", "0.75,1.0",
                               "--flip"])
    assert res.exit_code == 0, res.output
    pred = run / "predictions/deeplabv2"
    rows = read_csv(pred / "manifest.csv")
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    mask = read_mask(pred / rows[0]["mask"])
    assert mask.shape == (64, 80) and mask.max() < 6
    with np.load(pred / rows[0]["scores"]) as z:
        scores = z["scores"].astype(np.float32)
        assert scores.shape == (6, 64, 80) and np.allclose(scores.sum(0), 1.0, atol=1e-2)
        assert np.array_equal(scores.argmax(0), mask) or (scores.argmax(0) != mask).mean() < 0.01
    assert read_json(pred / "stage.json")["quality"]["images"] == 3
    res = runner.invoke(main, ["predict", "--checkpoint", str(run / "train/deeplabv2/checkpoint.pt"), "--dataset",
                               str(demo_root), "--split", "val", "--run", str(run), "--crf", "--no-write-scores",
                               "--overwrite"])
    assert res.exit_code == 0, res.output
    rows = read_csv(pred / "manifest.csv")
    assert all(r["status"] == "ok" and r["scores"] == "" for r in rows)
    assert read_json(pred / "stage.json")["config"]["crf"] is True
    crf_mask = read_mask(pred / rows[0]["mask"])
    assert crf_mask.shape == (64, 80) and set(np.unique(crf_mask)) <= set(np.unique(mask)) | {0}


def test_cli_errors(demo_root, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--model", "deeplabv2", "--labels", "nope/none", "--dataset",
                               str(demo_root), "--run", str(tmp_path)])
    assert res.exit_code == 2 and "no such stage folder" in res.output
    bad = tmp_path / "bad.pt"
    torch.save({"x": 1}, bad)
    res = runner.invoke(main, ["predict", "--checkpoint", str(bad), "--dataset", str(demo_root), "--run",
                               str(tmp_path)])
    assert res.exit_code == 2 and "not a wsss checkpoint" in res.output
    with pytest.raises(UnsafeFileError):
        load_checkpoint(bad)
    res = runner.invoke(main, ["train", "--model", "nope", "--labels", "gt", "--dataset", str(demo_root)])
    assert res.exit_code == 2 and "nope" in res.output


def test_mask_pairs_refuse_wrong_labels(demo_root, tmp_path):
    from wsss.errors import DatasetError
    from wsss.folders import StageFolder
    from wsss.io import write_mask

    (tmp_path / "masks").mkdir()
    write_mask(tmp_path / "masks" / "other.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match="no masks for any image"):
        MaskPairs(open_dataset(demo_root, "train"), StageFolder.open(tmp_path))


def test_segment_flip_of_a_flip_equivariant_model():
    from wsss.models.inference import segment

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1).eval()
    image = np.random.default_rng(0).integers(0, 255, (16, 20, 3), dtype=np.uint8)
    plain = segment(model, image)
    assert plain.shape == (4, 16, 20) and np.allclose(plain.sum(0), 1.0, atol=1e-5)
    assert np.allclose(segment(model, image, flip=True), plain, atol=1e-5)
    multi = segment(model, image, scales=(0.5, 1.0))
    assert multi.shape == plain.shape and not np.allclose(multi, plain, atol=1e-4)


@pytest.mark.slow
def test_sigkill_then_resume_matches_one_go(demo_root, tmp_path):
    """A `wsss train` process killed (SIGKILL) after a checkpoint, re-run with the same command, ends with the
    weights of an uninterrupted run."""
    import signal
    import time

    def command(run):
        return [sys.executable, "-m", "wsss", "train", "--model", "deeplabv2", "--labels", "gt", "--dataset",
                str(demo_root), "--run", str(run), "--backbone", "resnet18", "--iterations", "6", "--batch-size",
                "2", "--crop-size", "32", "--checkpoint-every", "2", "--loader-workers", "1", "--threads", "2"]

    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    one = subprocess.run(command(tmp_path / "one"), env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    proc = subprocess.Popen(command(tmp_path / "two"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "two/train/deeplabv2/checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt)["iteration"]
    assert killed_at in (2, 4)
    again = subprocess.run(command(tmp_path / "two"), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    info = read_json(tmp_path / "two/train/deeplabv2/stage.json")
    assert info["training"]["resumed_from"] == killed_at and info["training"]["iterations_done"] == 6
    a, b = _weights(tmp_path / "one/train/deeplabv2"), _weights(tmp_path / "two/train/deeplabv2")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [int(r["iteration"]) for r in read_csv(tmp_path / "two/train/deeplabv2/log.csv")] == [6]


def test_a_diverging_loss_stops_training_with_the_fix(demo_root, tmp_path):
    """A learning rate that makes the loss inf/nan stops at that iteration with an error naming --lr (before it was
    logged as nan for the rest of the schedule); no checkpoint of the broken weights is written."""
    ds = open_dataset(demo_root, "train")
    with pytest.raises(StageError, match=r"loss became (nan|inf) at iteration \d+; lower --lr \(now 1e\+12\)"):
        run_train("deeplabv2", TrainConfig(iterations=6, lr=1e12, **TINY), ds, tmp_path, progress=False)
    assert not (tmp_path / "train/deeplabv2/checkpoint.pt").exists()
    info = read_json(tmp_path / "train/deeplabv2/stage.json")
    assert info["status"] == "failed" and "lower --lr" in info["error"]


def test_adamw_keeps_the_head_at_its_multiple():
    from wsss.models import build_model
    from wsss.trainers.segmentation import make_optimizer

    model = build_model("deeplabv2", num_classes=3, backbone="resnet18")
    opt = make_optimizer(model, lr=1e-4, head_lr_mult=10.0, momentum=0.9, weight_decay=0.01, optimizer="adamw")
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(1e-4), pytest.approx(1e-3)]
    assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    assert sum(p.numel() for p in opt.param_groups[0]["params"]) == n_backbone
    with pytest.raises(ValueError, match="adamw"):
        make_optimizer(model, lr=1e-4, head_lr_mult=10.0, momentum=0.9, weight_decay=0.0, optimizer="lamb")


def test_bf16_auto_is_off_for_lite_backbones_on_cpu(monkeypatch):
    import wsss.runtime as train

    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert train.resolve_speed("auto", cpu, "bf16", "resnet101") is True
    assert train.resolve_speed("auto", cpu, "bf16", "efficientnet_lite0") is False
    assert train.resolve_speed("on", cpu, "bf16", "efficientnet_lite0") is True
    assert train.resolve_speed("auto", cpu, "channels_last", "efficientnet_lite0") is True
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    assert train.resolve_speed("auto", cpu, "bf16", "resnet101") is False


def test_a_time_budget_ends_the_run_complete_and_is_not_retrained(demo_root, tmp_path):
    """--max-minutes: the run ends when the budget is spent, before --iterations, complete (not 'stopped'); the
    poly rate reaches 0 by the budget; a rerun trains no further and keeps the checkpoint as it is."""
    ds = open_dataset(demo_root, "train")
    config = TrainConfig(iterations=10_000, max_minutes=0.5 / 60, **TINY)  # half a second
    s = run_train("deeplabv2", config, ds, tmp_path, progress=False)
    assert s.budget_spent and not s.stopped_early and 1 <= s.iterations < 10_000
    info = read_json(tmp_path / "train/deeplabv2/stage.json")
    assert info["status"] == "complete" and info["training"]["ended_by"] == "time budget"
    assert info["training"]["training_seconds"] >= 0.5
    state = load_checkpoint(tmp_path / "train/deeplabv2/checkpoint.pt")
    assert state["budget_spent"] is True and state["iteration"] == s.iterations and state["elapsed"] >= 0.5
    ckpt_bytes = (tmp_path / "train/deeplabv2/checkpoint.pt").read_bytes()
    again = run_train("deeplabv2", config, ds, tmp_path, progress=False)
    assert again.iterations == s.iterations and again.start_iteration == s.iterations and again.budget_spent
    assert (tmp_path / "train/deeplabv2/checkpoint.pt").read_bytes() == ckpt_bytes


def test_repeat_threshold_repeats_the_rare_class_images_in_the_run(demo_root, tmp_path):
    """--repeat-threshold on GT: stage.json counts the epoch's samples from the masks' class shares."""
    from wsss.pairs import repeat_factors

    ds = open_dataset(demo_root, "train")
    config = TrainConfig(iterations=2, repeat_threshold=0.9, **TINY)
    run_train("deeplabv2", config, ds, tmp_path, progress=False)
    sampling = read_json(tmp_path / "train/deeplabv2/stage.json")["training"]["sampling"]
    presence = MaskPairs(ds, None, check=False, progress=False).class_presence()
    factors = repeat_factors(presence, 0.9)
    assert sampling["pairs"] == len(ds.ids) and sampling["repeated_pairs"] == int((factors > 1).sum()) > 0
    assert sampling["max_repeat_factor"] == pytest.approx(factors.max(), abs=1e-3)
    assert int(np.floor(factors).sum()) <= sampling["epoch_samples"] <= int(np.ceil(factors).sum())
    with pytest.raises(ConfigError, match="--repeat-threshold"):
        run_train("deeplabv2", TrainConfig(repeat_threshold=-1, **TINY), ds, tmp_path / "bad", progress=False)


def test_budget_poly_decays_to_zero_by_the_budget():
    from wsss.runtime import budget_poly_lr

    assert budget_poly_lr(1.0, 10, 100, elapsed=50.0, budget=100.0) == pytest.approx(0.5 ** 0.9)
    assert budget_poly_lr(1.0, 60, 100, elapsed=10.0, budget=100.0) == pytest.approx(0.4 ** 0.9)
    assert budget_poly_lr(1.0, 10, 100, elapsed=150.0, budget=100.0) == 0.0


def test_output_stride_is_kept_for_predict(demo_root, tmp_path):
    from wsss.errors import ConfigError
    from wsss.stages.predict import load_trained_model

    ds = open_dataset(demo_root, "train")
    run_train("deeplabv2", TrainConfig(iterations=1, output_stride=16, **TINY), ds, tmp_path, progress=False)
    ckpt = tmp_path / "train/deeplabv2/checkpoint.pt"
    assert load_checkpoint(ckpt)["meta"]["model_kwargs"] == {"output_stride": 16}
    model, _ = load_trained_model(ckpt)
    assert model.backbone.output_stride == 16
    with pytest.raises(ConfigError, match="fcn8s has a fixed output stride"):
        run_train("fcn8s", TrainConfig(iterations=1, output_stride=16, **TINY), ds, tmp_path / "b", progress=False)
    assert not (tmp_path / "b/train").exists()  # refused before any stage folder is made
