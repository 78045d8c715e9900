"""Issue 10: the stages that train a network before their per-image pass (CAM seeds, saliency seeds, the BoxSup
label guide) killed with SIGKILL during training and during inference, then re-run: the final outputs are identical
to an uninterrupted run (every mask and score byte, and the trained weights, on CPU with one thread).

Kills land at chosen phases: after a random number of new training checkpoints (plus a random delay, so mid-epoch or
mid-write) and after a random number of finished masks. After each kill every file a reader would take as an output
must be whole. The helpers come from tests/test_kill.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_kill import (
    ENV,
    WSSS,
    _check_no_half_files,
    _checkpoints_seen,
    _count,
    _manifest,
    _run_to_end,
)

from wsss.datasets import make_demo_data
from wsss.io import load_checkpoint, read_json

N_IMAGES = 24


@pytest.fixture(scope="module")
def model_kill_data(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("kill_models") / "data", N_IMAGES, size=(64, 80), seed=31)


def _kill_when(cmd: list[str], ready, *, delay: float = 0.0, limit: float = 120.0) -> bool:
    """Start ``cmd`` in its own process group, wait until ``ready()`` (polled), sleep ``delay``, SIGKILL the group.
    Returns True when the kill hit a running process (False: it had already exited)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and not ready() and time.monotonic() - t0 < limit:
            time.sleep(0.003)
        if delay and proc.poll() is None:
            time.sleep(delay)
    finally:
        hit = proc.poll() is None
        if hit:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return hit


def _after_new_versions(path: Path, count: int):
    """A ``ready()`` that turns true once ``path`` was rewritten ``count`` times since the call."""
    seen: set = set()
    _checkpoints_seen(path, seen)
    target = len(seen) + count
    return lambda: _checkpoints_seen(path, seen) >= target


def _at_least(folder: Path, n: int):
    return lambda: _count(folder) >= n


def _kill_in_training(cmd: list[str], ckpt: Path, stage: Path, reference: Path, rng, what: str, epochs: int) -> None:
    """Two kills in training, each after 1-2 new epoch checkpoints plus up to 0.3 s; at least one lands mid-run."""
    epochs_at_kill = []
    for _ in range(2):
        assert _kill_when(cmd, _after_new_versions(ckpt, int(rng.integers(1, 3))), delay=float(rng.uniform(0, 0.3)))
        epochs_at_kill.append(int(load_checkpoint(ckpt)["epoch"]) if ckpt.exists() else 0)
        _check_no_half_files(stage, reference)
    print(f"{what} epochs checkpointed at the kills:", epochs_at_kill)
    assert any(0 < e < epochs for e in epochs_at_kill), f"no kill landed mid-training: {epochs_at_kill}"


def _kill_in_inference(cmd: list[str], stage: Path, reference: Path, rng) -> None:
    """Two kills in the per-image pass, each after a random number of finished masks; at least one mid-run."""
    masks_at_kill = []
    for _ in range(2):
        have = _count(stage / "masks")
        target = int(rng.integers(have + 1, N_IMAGES)) if have + 1 < N_IMAGES else N_IMAGES
        _kill_when(cmd, _at_least(stage / "masks", target))
        masks_at_kill.append(_count(stage / "masks"))
        _check_no_half_files(stage, reference)
    print("masks at the inference kills:", masks_at_kill)
    assert any(0 < c < N_IMAGES for c in masks_at_kill), f"no kill landed mid-inference: {masks_at_kill}"


def _same_files(a: Path, b: Path, sub: str) -> int:
    names = sorted(p.name for p in (b / sub).iterdir())
    assert sorted(p.name for p in (a / sub).iterdir()) == names, sub
    for name in names:
        assert (a / sub / name).read_bytes() == (b / sub / name).read_bytes(), f"{sub}/{name} differs"
    return len(names)


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], torch.Tensor):
            assert torch.equal(a[name], b[name]), name


def _assert_same_stage(stage: Path, reference: Path, subfolders: tuple[str, ...]) -> None:
    assert _manifest(stage) == _manifest(reference)
    for sub in subfolders:
        assert _same_files(stage, reference, sub) > 0
    info, ref_info = read_json(stage / "stage.json"), read_json(reference / "stage.json")
    assert info["status"] == ref_info["status"] == "complete"
    assert info["quality"] == ref_info["quality"] and info["config"] == ref_info["config"]  # (the hash holds the
    # upstream folders' paths, which differ between the two runs)
    assert not [p for p in stage.rglob("*") if p.name.startswith(".")], "temporary files left behind"


# ------------------------------------------------------------------------------------------------- CAM
CAM = ["--backbone", "resnet18", "--epochs", "6", "--batch-size", "4", "--crop-size", "48", "--resize-long", "64,80",
       "--lr", "0.001", "--optimizer", "adamw", "--scales", "1.0,0.5"]


@pytest.mark.slow
def test_cam_seeds_killed_in_training_and_inference_resume_identically(model_kill_data, tmp_path):
    def cmd_for(run):
        return [*WSSS, "seeds", "--method", "cam", "--dataset", str(model_kill_data), "--run", str(run), *CAM]

    _run_to_end(cmd_for(tmp_path / "ref"))
    reference, stage = tmp_path / "ref" / "seeds" / "cam", tmp_path / "run" / "seeds" / "cam"
    ckpt = stage / "classifier.pt"
    rng = np.random.default_rng(11)
    _kill_in_training(cmd_for(tmp_path / "run"), ckpt, stage, reference, rng, "classifier", 6)
    _kill_in_inference(cmd_for(tmp_path / "run"), stage, reference, rng)
    done = _run_to_end(cmd_for(tmp_path / "run"))
    assert "resumed" in done.stdout
    _assert_same_stage(stage, reference, ("masks", "scores"))
    ref_state, state = load_checkpoint(reference / "classifier.pt"), load_checkpoint(ckpt)
    assert state["complete"] and state["epoch"] == ref_state["epoch"] == 6
    _same_weights(state["model"], ref_state["model"])
    assert "optimizer" not in state and "optimizer" not in ref_state  # a finished classifier keeps what inference needs


# -------------------------------------------------------------------------------------------- saliency
SALIENCY = ["--input-size", "32", "--epochs", "6", "--batch-size", "4", "--grabcut-iterations", "2"]


@pytest.mark.slow
def test_saliency_seeds_killed_in_targets_training_and_inference_resume_identically(model_kill_data, tmp_path):
    def cmd_for(run):
        return [*WSSS, "seeds", "--method", "saliency", "--dataset", str(model_kill_data), "--run", str(run),
                *SALIENCY]

    _run_to_end(cmd_for(tmp_path / "ref"))
    reference, stage = tmp_path / "ref" / "seeds" / "saliency", tmp_path / "run" / "seeds" / "saliency"
    rng = np.random.default_rng(12)
    # while making the GrabCut training targets
    target = int(rng.integers(2, N_IMAGES - 2))
    assert _kill_when(cmd_for(tmp_path / "run"), _at_least(stage / "targets", target))
    cached = _count(stage / "targets")
    assert 0 < cached < N_IMAGES, cached
    for path in (stage / "targets").iterdir():
        if not path.name.startswith("."):
            assert path.read_bytes() == (reference / "targets" / path.name).read_bytes(), path.name
    # in training, then in inference
    ckpt = stage / "checkpoint.pt"
    _kill_in_training(cmd_for(tmp_path / "run"), ckpt, stage, reference, rng, "saliency", 6)
    _kill_in_inference(cmd_for(tmp_path / "run"), stage, reference, rng)
    done = _run_to_end(cmd_for(tmp_path / "run"))
    assert "resumed" in done.stdout
    _assert_same_stage(stage, reference, ("masks", "scores", "saliency", "targets"))
    ref_state, state = load_checkpoint(reference / "saliency.pt"), load_checkpoint(stage / "saliency.pt")
    assert state["epoch"] == ref_state["epoch"] == 6
    _same_weights(state["model"], ref_state["model"])


# ---------------------------------------------------------------------------------------------- BoxSup
BOXSUP = ["--boxsup-rounds", "1", "--model", "deeplabv2", "--backbone", "resnet18", "--iterations", "12",
          "--batch-size", "2", "--crop-size", "32", "--lr", "0.001", "--top-k", "2", "--device", "cpu"]


@pytest.mark.slow
def test_boxsup_guide_killed_in_every_phase_resumes_identically(model_kill_data, tmp_path):
    """Kills while making the candidates, round 0's labels, round 1's training and round 1's labels."""
    def cmd_for(run):
        return [*WSSS, "label", "--guide", "boxes", "--dataset", str(model_kill_data), "--run", str(run), *BOXSUP]

    _run_to_end(cmd_for(tmp_path / "ref"))
    ref, run = tmp_path / "ref", tmp_path / "run"
    rng = np.random.default_rng(13)
    phases = [("candidates/selective", run / "candidates" / "selective" / "masks"),
              ("labels/boxes_r0", run / "labels" / "boxes_r0" / "masks"),
              ("labels/boxes_r1", run / "labels" / "boxes_r1" / "masks")]
    landed = []
    for name, masks in phases[:2]:
        target = int(rng.integers(max(1, _count(masks)) + 1, N_IMAGES))
        _kill_when(cmd_for(run), _at_least(masks, target))
        landed.append((name, _count(masks)))
        _check_no_half_files(masks.parent, ref / name)
    # round 1's training: killed after its first checkpoint-free seconds, at a random point
    train = run / "train" / "boxsup_r1"
    assert _kill_when(cmd_for(run), lambda: (train / "stage.json").exists(), delay=float(rng.uniform(0.2, 1.0)))
    landed.append(("train/boxsup_r1", (train / "checkpoint.pt").exists()))
    _check_no_half_files(train, ref / "train" / "boxsup_r1")
    name, masks = phases[2]
    _kill_when(cmd_for(run), _at_least(masks, int(rng.integers(1, N_IMAGES))))
    landed.append((name, _count(masks)))
    _check_no_half_files(masks.parent, ref / name)
    print("state at the kills:", landed)
    assert 0 < landed[0][1] < N_IMAGES and 0 < landed[1][1] < N_IMAGES, landed
    _run_to_end(cmd_for(run))
    for name in ("candidates/selective", "labels/boxes_r0", "labels/boxes_r1", "labels/boxes"):
        _assert_same_stage(run / name, ref / name, ("masks",) if name != "candidates/selective" else
                           ("masks", "candidates"))
    ckpt = "train/boxsup_r1/checkpoint.pt"
    _same_weights(load_checkpoint(run / ckpt)["model"], load_checkpoint(ref / ckpt)["model"])


def test_classifier_training_interrupted_after_an_epoch_resumes_to_identical_weights(demo_root, tmp_path,
                                                                                      monkeypatch):
    """Regression (found by the CAM kill test): the augmentation draws from torch's global RNG, which a resume used
    to restart from the seed; the checkpoint now carries it. Interrupt after epoch 1's checkpoint, resume, compare."""
    from wsss.config import CamConfig
    from wsss.datasets import open_dataset
    from wsss.trainers import cam_classifier as tc

    torch.set_num_threads(1)
    config = CamConfig(backbone="resnet18", epochs=3, batch_size=4, crop_size=32, resize_long=(40, 64), lr=1e-3,
                       optimizer="adamw", bf16="off", device="cpu")
    ds = open_dataset(demo_root, "train")
    ref = tc.train_classifier(ds, tmp_path / "ref", config)

    saver = "save_checkpoint" if hasattr(tc, "save_checkpoint") else "_atomic_torch_save"  # (renamed upstream)
    real_save, saves = getattr(tc, saver), []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 1:
            raise KeyboardInterrupt  # as if killed right after the first epoch's checkpoint

    monkeypatch.setattr(tc, saver, save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tc.train_classifier(ds, tmp_path / "run", config)
    monkeypatch.setattr(tc, saver, real_save)
    assert tc.read_checkpoint(tmp_path / "run" / "classifier.pt")["epoch"] == 1
    torch.manual_seed(1234)  # the resumed process starts with another global RNG state
    got = tc.train_classifier(ds, tmp_path / "run", config)
    a, b = tc.read_checkpoint(ref), tc.read_checkpoint(got)
    assert a["epoch"] == b["epoch"] == 3 and b["complete"]
    _same_weights(a["model"], b["model"])
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == ["1", "2", "3"]  # one row an epoch, none lost or repeated
