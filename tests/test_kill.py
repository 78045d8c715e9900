"""Issue 10 / issue 2: a stage killed (SIGKILL) at random points resumes to the same outputs as an uninterrupted run.

Each test runs the real ``wsss`` command in a subprocess, kills it several times at random points (by time, which
also hits start-up and the stage.json/manifest writes, and by progress, when a random number of masks exist),
checks after every kill that no file a reader would take as an output is half-written, then re-runs to completion
and compares every mask byte for byte with an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.datasets import make_demo_data
from wsss.io import load_checkpoint

WSSS = [sys.executable, "-m", "wsss.cli"] if not (Path(sys.executable).parent / "wsss").exists() else \
    [str(Path(sys.executable).parent / "wsss")]
N_IMAGES = 80
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def kill_data(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("kill") / "data", N_IMAGES, size=(160, 200), seed=21)


def _run_to_end(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _count(folder: Path) -> int:
    try:
        return sum(1 for p in folder.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return 0


def _kill_at(cmd: list[str], masks: Path, *, after_seconds: float | None = None, at_masks: int | None = None) -> int:
    """Start ``cmd`` in its own process group and SIGKILL the group at the given point; returns masks at the kill."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < 120:
            if after_seconds is not None and time.monotonic() - t0 >= after_seconds:
                break
            if at_masks is not None and _count(masks) >= at_masks:
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return _count(masks)


def _check_no_half_files(stage: Path, reference: Path) -> None:
    """Every file a reader would take as an output is whole: masks equal the uninterrupted run's, images decode,
    arrays and checkpoints load, JSON parses, every CSV row has every column (training logs included)."""
    if not stage.exists():
        return
    for path in stage.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue  # hidden ".<name>.<random>.tmp" files are atomic_write's, never read, deleted on resume
        rel = path.relative_to(stage)
        if rel.parts[0] == "masks" and (reference / rel).exists():
            assert path.read_bytes() == (reference / rel).read_bytes(), f"{rel} differs from the uninterrupted run"
        elif path.suffix == ".png":
            with Image.open(path) as im:
                im.load()
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                [data[k] for k in data.files]
        elif path.suffix == ".pt":
            load_checkpoint(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            with path.open(newline="") as fh:
                rows = list(csv.reader(fh))
            assert rows and all(len(r) == len(rows[0]) for r in rows), f"{rel}: a half-written row"
            if "status" in rows[0]:  # a manifest: every row has its status
                col = rows[0].index("status")
                assert all(r[col] for r in rows[1:]), f"{rel}: a row without a status"


def _manifest(stage: Path) -> list[tuple[str, str, str, str]]:
    with (stage / "manifest.csv").open() as fh:
        return [(r["image_id"], r["mask"], r["scores"], r["status"]) for r in csv.DictReader(fh)]


def _assert_same_outputs(stage: Path, reference: Path) -> None:
    assert _manifest(stage) == _manifest(reference)
    ref_files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    files = sorted(p.relative_to(stage) for p in stage.rglob("*") if p.is_file())
    assert files == ref_files, "extra or missing files (temporary files left behind?)"
    for rel in ref_files:
        if rel.parts[0] in ("masks", "scores", "candidates"):
            assert (stage / rel).read_bytes() == (reference / rel).read_bytes(), rel
    info, ref_info = (json.loads((s / "stage.json").read_text()) for s in (stage, reference))
    assert info["status"] == ref_info["status"] == "complete"
    assert info["quality"] == ref_info["quality"] and info["config_hash"] == ref_info["config_hash"]


def _kill_resume_compare(cmd_for, stage_of, tmp_path: Path, seed: int, kills: int = 4,
                         n_images: int = N_IMAGES) -> list[int]:
    """Uninterrupted run, then ``kills`` random kills + a final resume; returns the mask counts at the kills."""
    ref_run, run = tmp_path / "ref", tmp_path / "run"
    t0 = time.monotonic()
    _run_to_end(cmd_for(ref_run))
    duration = time.monotonic() - t0
    reference, stage = stage_of(ref_run), stage_of(run)
    rng = np.random.default_rng(seed)
    counts = []
    for k in range(kills):
        if k == 0:  # by time (start-up, stage.json, the first images), or at a random image count if that comes
            # first: the reference's duration only estimates this run's when the machine's load changes
            when = float(rng.uniform(0.3, 0.8)) * duration
            first = int(rng.integers(1, n_images))
            counts.append(_kill_at(cmd_for(run), stage / "masks", after_seconds=when, at_masks=first))
        else:  # by progress: a random number of finished images
            have = _count(stage / "masks")
            target = int(rng.integers(have + 1, n_images)) if have + 1 < n_images else n_images
            counts.append(_kill_at(cmd_for(run), stage / "masks", at_masks=target))
        _check_no_half_files(stage, reference)
    done = _run_to_end(cmd_for(run))
    _assert_same_outputs(stage, reference)
    assert "resumed" in done.stdout
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_threshold_seeds_killed_at_random_points_resume_identically(kill_data, tmp_path, workers):
    def cmd_for(run):
        return [*WSSS, "seeds", "--method", "threshold", "--dataset", str(kill_data), "--run", str(run),
                "--workers", str(workers)]

    counts = _kill_resume_compare(cmd_for, lambda run: run / "seeds" / "threshold", tmp_path, seed=workers)
    print("masks at the kills:", counts)
    assert any(0 < c < N_IMAGES for c in counts), f"no kill landed mid-run: {counts}"


def test_stale_temp_files_of_a_killed_run_are_removed_on_resume(demo_root, tmp_path):
    """What SIGKILL inside atomic_write leaves (a hidden temp file) is never an output and is cleaned on resume."""
    from click.testing import CliRunner

    from wsss.cli import main

    args = ["seeds", "--method", "threshold", "--dataset", str(demo_root), "--run", str(tmp_path / "run")]
    assert CliRunner().invoke(main, args).exit_code == 0
    stage = tmp_path / "run" / "seeds" / "threshold"
    (stage / "masks" / "demo_0003.png").unlink()
    (stage / "masks" / ".demo_0003.png.k1ll3d.tmp").write_bytes(b"\x89PNG half")
    (stage / ".manifest.csv.x.tmp").write_bytes(b"image_id,ma")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "1 written, 11 resumed" in result.output
    assert not [p for p in stage.rglob("*") if p.name.startswith(".")]


@pytest.fixture(scope="module")
def small_kill_data(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("kill_small") / "data", 30, size=(128, 160), seed=22)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grabcut", "box"])
def test_box_seeds_killed_at_random_points_resume_identically(small_kill_data, tmp_path, method):
    from wsss.stages.seeds import SEED_METHODS

    if method not in SEED_METHODS:
        pytest.skip(f"seed method {method} not registered")

    def cmd_for(run):
        return [*WSSS, "seeds", "--method", method, "--dataset", str(small_kill_data), "--run", str(run)]

    counts = _kill_resume_compare(cmd_for, lambda run: run / "seeds" / method, tmp_path, seed=3, kills=3,
                                  n_images=30)
    print(method, "masks at the kills:", counts)
    assert any(0 < c < 30 for c in counts), f"no kill landed mid-run: {counts}"


@pytest.mark.slow
def test_crf_refine_killed_at_random_points_resume_identically(small_kill_data, tmp_path):
    upstream_run = tmp_path / "up"
    _run_to_end([*WSSS, "seeds", "--method", "grabcut", "--dataset", str(small_kill_data), "--run",
                 str(upstream_run)])
    upstream = upstream_run / "seeds" / "grabcut"

    def cmd_for(run):
        return [*WSSS, "refine", "--crf", "--input", str(upstream), "--dataset", str(small_kill_data), "--run",
                str(run)]

    counts = _kill_resume_compare(cmd_for, lambda run: run / "refined" / "crf", tmp_path, seed=4, kills=3,
                                  n_images=30)
    print("crf masks at the kills:", counts)
    assert any(0 < c < 30 for c in counts), f"no kill landed mid-run: {counts}"


def _checkpoints_seen(path: Path, seen: set) -> int:
    """Count distinct versions of ``path`` (each atomic checkpoint write is a new inode)."""
    try:
        st = path.stat()
        seen.add((st.st_ino, st.st_mtime_ns))
    except FileNotFoundError:
        pass
    return len(seen)


@pytest.mark.slow
def test_training_killed_at_random_points_resumes_to_identical_weights(tmp_path):
    """wsss train SIGKILLed at random points (start-up, mid-iteration, mid-checkpoint write), re-run until done:
    the final weights equal an uninterrupted run's exactly (CPU, one thread)."""
    import torch

    from wsss.io import load_checkpoint

    data = make_demo_data(tmp_path / "data", 8, size=(48, 64), seed=23)
    iterations = 40  # long enough that a kill after 1-3 new checkpoints lands mid-training on a fast machine

    def cmd_for(run):
        return [*WSSS, "train", "--model", "segnet_basic", "--labels", "gt", "--dataset", str(data), "--split",
                "trainval", "--run", str(run), "--iterations", str(iterations), "--batch-size", "2", "--crop-size",
                "32", "--loader-workers", "0", "--checkpoint-every", "1", "--threads", "1", "--device", "cpu"]

    t0 = time.monotonic()
    _run_to_end(cmd_for(tmp_path / "ref"))
    duration = time.monotonic() - t0
    ckpt = tmp_path / "run" / "train" / "segnet_basic" / "checkpoint.pt"
    rng = np.random.default_rng(7)
    done_at_kill = []
    for k in range(3):
        proc = subprocess.Popen(cmd_for(tmp_path / "run"), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        start, seen = time.monotonic(), set()
        if k == 0:
            deadline = start + float(rng.uniform(0.2, 0.7)) * duration
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        else:  # after a random number of new checkpoints, plus a random delay (lands mid-iteration or mid-write)
            _checkpoints_seen(ckpt, seen)
            target = len(seen) + int(rng.integers(1, 4))
            while proc.poll() is None and _checkpoints_seen(ckpt, seen) < target and time.monotonic() - start < 120:
                time.sleep(0.005)
            time.sleep(float(rng.uniform(0.0, 0.3)))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if ckpt.exists():  # whole, loadable, and never a file a reader would take half
            done_at_kill.append(int(load_checkpoint(ckpt)["iteration"]))
        else:
            done_at_kill.append(0)
        stage = ckpt.parent
        if stage.exists():
            for path in stage.iterdir():
                if path.suffix == ".json":
                    json.loads(path.read_text())
                elif path.suffix == ".csv":
                    list(csv.DictReader(path.open()))
    print("iterations checkpointed at the kills:", done_at_kill)
    assert any(0 < d < iterations for d in done_at_kill), f"no kill landed mid-training: {done_at_kill}"
    _run_to_end(cmd_for(tmp_path / "run"))
    ref = load_checkpoint(tmp_path / "ref" / "train" / "segnet_basic" / "checkpoint.pt")
    got = load_checkpoint(ckpt)
    assert got["iteration"] == ref["iteration"] == iterations
    assert ref["model"].keys() == got["model"].keys()
    for name, tensor in ref["model"].items():
        assert torch.equal(tensor, got["model"][name]), name
    assert not [p for p in ckpt.parent.rglob("*") if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.slow
def test_predict_killed_at_random_points_resumes_identically(tmp_path):
    """wsss predict (per-image, masks + float16 scores) killed and resumed: masks and scores byte-identical."""
    data = make_demo_data(tmp_path / "data", 16, size=(64, 80), seed=24)
    _run_to_end([*WSSS, "train", "--model", "segnet_basic", "--labels", "gt", "--dataset", str(data), "--split",
                 "trainval", "--run", str(tmp_path / "model"), "--iterations", "2", "--batch-size", "2",
                 "--crop-size", "32", "--loader-workers", "0", "--threads", "1", "--device", "cpu"])
    ckpt = tmp_path / "model" / "train" / "segnet_basic"

    def cmd_for(run):
        return [*WSSS, "predict", "--checkpoint", str(ckpt), "--dataset", str(data), "--run", str(run),
                "--device", "cpu"]

    counts = _kill_resume_compare(cmd_for, lambda run: run / "predictions" / "segnet_basic", tmp_path, seed=5,
                                  kills=2, n_images=16)
    print("predict masks at the kills:", counts)
    assert any(0 < c < 16 for c in counts), f"no kill landed mid-run: {counts}"


@pytest.mark.slow
def test_label_guide_killed_at_random_points_resumes_identically(small_kill_data, tmp_path):
    upstream_run = tmp_path / "up"
    _run_to_end([*WSSS, "seeds", "--method", "grabcut", "--dataset", str(small_kill_data), "--run",
                 str(upstream_run)])

    def cmd_for(run):
        return [*WSSS, "label", "--guide", "cam", "--seeds", str(upstream_run / "seeds" / "grabcut"), "--dataset",
                str(small_kill_data), "--run", str(run)]

    counts = _kill_resume_compare(cmd_for, lambda run: run / "labels" / "cam", tmp_path, seed=6, kills=3,
                                  n_images=30)
    print("label masks at the kills:", counts)
    assert any(0 < c < 30 for c in counts), f"no kill landed mid-run: {counts}"


@pytest.mark.slow
def test_candidates_killed_at_random_points_resume_identically(small_kill_data, tmp_path):
    def cmd_for(run):
        return [*WSSS, "candidates", "--dataset", str(small_kill_data), "--run", str(run)]

    counts = _kill_resume_compare(cmd_for, lambda run: run / "candidates" / "selective", tmp_path, seed=8, kills=3,
                                  n_images=30)
    print("candidates masks at the kills:", counts)
    assert any(0 < c < 30 for c in counts), f"no kill landed mid-run: {counts}"
